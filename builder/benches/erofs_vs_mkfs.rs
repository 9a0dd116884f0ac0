//! Our EROFS writer (tarball -> tree -> image, no extraction) against `mkfs.erofs` 1.5 on an
//! extracted copy of the same Debian base, uncompressed and LZ4/LZ4HC-compressed (mkfs.erofs
//! -zlz4 / -zlz4hc / -zlz4hc,12), same run. Run with
//! `RKE2_TEST_BASE=<base.tar.zst> cargo bench -p rke2-image --bench erofs_vs_mkfs`.

#![allow(clippy::unwrap_used)] // a benchmark may unwrap

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rke2_image::erofs::{self, Compression, Options};
use rke2_image::tree::Tree;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn main() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let base = Path::new(&base);
    let tmp = tempfile::tempdir().unwrap();
    let staged = tmp.path().join("root");
    std::fs::create_dir(&staged).unwrap();

    // mkfs.erofs needs a directory tree: extraction is its extra cost.
    let extract = run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(base)
        .arg("-C")
        .arg(&staged));
    let mkfs_img = tmp.path().join("mkfs.erofs");
    let mkfs = run(Command::new("mkfs.erofs")
        .arg("-U00000000-0000-0000-0000-000000000000")
        .arg(&mkfs_img)
        .arg(&staged));
    let mkfs_t0_img = tmp.path().join("mkfs-t0.erofs");
    let mkfs_t0 = run(Command::new("mkfs.erofs")
        .args(["-T0", "-U00000000-0000-0000-0000-000000000000"])
        .arg(&mkfs_t0_img)
        .arg(&staged));

    let t = Instant::now();
    let mut tree = Tree::new(0);
    let stats = rke2_image::archive::load(base, &mut tree).unwrap();
    let load = t.elapsed();
    println!(
        "base: {} ({} entries, {} content bytes)",
        base.display(),
        stats.entries,
        stats.content_bytes
    );
    println!(
        "tar extraction (mkfs input, not counted): {:.2} s",
        secs(extract)
    );
    println!(
        "ours: tarball load (counted in every mode): {:.2} s",
        secs(load)
    );
    println!(
        "mkfs.erofs -T0 (uncompressed): {:.2} s {} bytes",
        secs(mkfs_t0),
        size(&mkfs_t0_img)
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let modes: [(&str, Compression, Option<&str>, usize); 5] = [
        ("none", Compression::None, None, threads),
        ("lz4", Compression::Lz4, Some("-zlz4"), threads),
        ("lz4hc:9", Compression::Lz4hc(9), Some("-zlz4hc"), threads),
        ("lz4hc:9 1 thread", Compression::Lz4hc(9), None, 1),
        (
            "lz4hc:12",
            Compression::Lz4hc(12),
            Some("-zlz4hc,12"),
            threads,
        ),
    ];
    let mut uncompressed = 0;
    let mut last_mkfs: Option<(Duration, u64)> = None;
    println!(
        "{:<18} {:>13} {:>9} {:>13} {:>9} {:>10} {:>10} {:>10}",
        "mode",
        "mkfs bytes",
        "mkfs s",
        "ours bytes",
        "ours s",
        "size ratio",
        "time ratio",
        "vs none"
    );
    for (name, compression, mkfs_flag, threads) in modes {
        // mkfs.erofs on the staged tree (mtimes kept, as ours); same flag only once.
        let mkfs = match (compression, mkfs_flag) {
            (Compression::None, _) => (mkfs, size(&mkfs_img)),
            (_, Some(flag)) => {
                let img = tmp.path().join(format!("mkfs-{name}.erofs"));
                let d = run(Command::new("mkfs.erofs")
                    .arg(flag)
                    .arg("-U00000000-0000-0000-0000-000000000000")
                    .arg(&img)
                    .arg(&staged));
                let r = (d, size(&img));
                std::fs::remove_file(&img).unwrap();
                r
            }
            (_, None) => last_mkfs.unwrap(),
        };
        last_mkfs = Some(mkfs);
        let opts = Options {
            uuid: [0; 16],
            volume_name: String::new(),
            build_time: 0,
        };
        let ours_img = tmp.path().join("ours.erofs");
        let t = Instant::now();
        let plan = erofs::plan_compressed(&tree, &opts, compression).unwrap();
        let out = File::create(&ours_img).unwrap();
        let written = erofs::write_with_threads(&tree, &plan, &out, 0, u64::MAX, threads).unwrap();
        out.sync_all().unwrap();
        let ours = load + t.elapsed();
        // fsck.erofs 1.5 only reports some errors (bad checksum) in its output at -d2.
        let out = Command::new("fsck.erofs")
            .arg("-d2")
            .arg(&ours_img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("<E>"),
            "fsck.erofs ({name}): {text}"
        );
        std::fs::remove_file(&ours_img).unwrap();
        if compression == Compression::None {
            uncompressed = written.size;
        }
        println!(
            "{:<18} {:>13} {:>9.2} {:>13} {:>9.2} {:>10.4} {:>10.2} {:>10.3}",
            name,
            mkfs.1,
            secs(mkfs.0),
            written.size,
            secs(ours),
            written.size as f64 / mkfs.1 as f64,
            secs(ours) / secs(mkfs.0),
            written.size as f64 / uncompressed as f64
        );
    }
    println!("(fsck.erofs -d2 passed on every image of ours; {threads} compression threads unless noted)");
}
