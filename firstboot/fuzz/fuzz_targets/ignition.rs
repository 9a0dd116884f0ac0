//! Ignition (version dispatch, spec 3.x walker, data URLs, gzip, hashes).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &str| {
    let _ = rke2_firstboot::dialects::ignition::parse(data);
});
