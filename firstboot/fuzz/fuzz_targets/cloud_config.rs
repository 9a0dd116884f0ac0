//! #cloud-config (YAML with budgets, write_files encodings, users, commands).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &str| {
    let _ = rke2_firstboot::dialects::cloud_config::parse(data);
});
