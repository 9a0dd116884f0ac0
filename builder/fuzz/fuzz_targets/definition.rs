//! Definition loading on arbitrary text: every input is accepted or refused with a message
//! naming the file; an accepted definition's command line passes the item checks and fits.
#![no_main]
use std::path::Path;
use std::sync::OnceLock;

use rke2_image::definition::Definition;

/// A directory with the files a definition may name (`base.tar`, `ov/`, `init`).
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temporary directory");
        std::fs::write(d.path().join("base.tar"), b"").expect("base");
        std::fs::write(d.path().join("init"), b"").expect("init");
        std::fs::create_dir(d.path().join("ov")).expect("overlay");
        d
    })
    .path()
}

libfuzzer_sys::fuzz_target!(|text: &str| {
    let file = Path::new("images/fuzz.yaml");
    match Definition::parse(text, file, scratch()) {
        Ok(d) => {
            for c in &d.cmdline {
                assert!(rke2_image::esp::check_item(c).is_ok(), "{c:?}");
            }
            let line =
                rke2_image::esp::command_line(&"0".repeat(64), 'b', d.fips, d.selinux, &d.cmdline);
            assert!(rke2_image::esp::check_length(&line).is_ok());
            // Every accepted item is exactly one parameter the kernel sees as written.
            let params = rke2_image_contract::cmdline::parse(&line);
            assert!(params.len() >= d.cmdline.len());
            assert!(
                rke2_image::definition::disk_size(d.esp_size, d.root_size, d.state_size).is_some()
            );
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("images/fuzz.yaml"), "{m}");
        }
    }
});
