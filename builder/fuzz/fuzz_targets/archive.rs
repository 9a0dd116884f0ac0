//! The base-archive reader on arbitrary bytes (plain tar, or gzip/zstd by magic), then the
//! reads the build makes of what it loaded: it may refuse, never panic, hang or blow memory.
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use rke2_image::archive;
use rke2_image::tree::Tree;

/// One file per process, rewritten per input (`archive::load` reads a path).
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
        .path()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = scratch().join("base.tar");
    let mut f = std::fs::File::create(&path).expect("scratch file");
    f.write_all(data).expect("scratch write");
    drop(f);
    let mut tree = Tree::new(0);
    if archive::load(&path, &mut tree).is_ok() {
        // What later stages read whole, through the size limits.
        for p in [&b"etc/os-release"[..], b"etc/passwd", b"etc/selinux/config"] {
            let _ = tree.read_file(p);
        }
        let _ = rke2_image::selinux::FileContexts::from_tree(&tree);
        let _ = rke2_image::initrd::kernel_versions(&tree);
    }
});
