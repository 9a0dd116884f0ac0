//! Detection plus every dialect, on arbitrary bytes (size, UTF-8 and format checks included).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rke2_firstboot::dialects::parse("fuzz", data, Some("meta-host"));
});
