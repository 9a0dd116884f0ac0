//! Our EROFS writer (tarball -> tree -> image, no extraction) against `mkfs.erofs` 1.5 on an
//! extracted copy of the same Debian base. Run with
//! `RKE2_TEST_BASE=<base.tar.zst> cargo bench -p rke2-image --bench erofs_vs_mkfs`.

#![allow(clippy::unwrap_used)] // a benchmark may unwrap

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rke2_image::erofs::{self, Options};
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

    let opts = Options {
        uuid: [0; 16],
        volume_name: String::new(),
        build_time: 0,
    };
    let t = Instant::now();
    let mut tree = Tree::new(0);
    let stats = rke2_image::archive::load(base, &mut tree).unwrap();
    let load = t.elapsed();
    let t = Instant::now();
    let plan = erofs::plan(&tree, &opts).unwrap();
    let planning = t.elapsed();
    let ours_img = tmp.path().join("ours.erofs");
    let t = Instant::now();
    let out = File::create(&ours_img).unwrap();
    let written = erofs::write(&tree, &plan, &out, 0, plan.size()).unwrap();
    out.sync_all().unwrap();
    let write = t.elapsed();
    let ours = load + planning + write;
    // fsck.erofs 1.5 only reports some errors (bad checksum) in its output at -d2.
    let t = Instant::now();
    let out = Command::new("fsck.erofs")
        .arg("-d2")
        .arg(&ours_img)
        .output()
        .unwrap();
    let fsck = t.elapsed();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("<E>"),
        "fsck.erofs: {text}"
    );

    println!(
        "base: {} ({} entries, {} content bytes)",
        base.display(),
        stats.entries,
        stats.content_bytes
    );
    println!("tar extraction (mkfs input):   {:8.2} s", secs(extract));
    println!(
        "mkfs.erofs (mtimes kept):      {:8.2} s  {:>12} bytes",
        secs(mkfs),
        size(&mkfs_img)
    );
    println!(
        "mkfs.erofs -T0:                {:8.2} s  {:>12} bytes",
        secs(mkfs_t0),
        size(&mkfs_t0_img)
    );
    println!(
        "ours: load {:.2} s + plan {:.2} s + write {:.2} s = {:.2} s  {:>12} bytes, {} inodes",
        secs(load),
        secs(planning),
        secs(write),
        secs(ours),
        written.size,
        written.inodes
    );
    println!(
        "fsck.erofs on ours:            {:8.2} s (passed)",
        secs(fsck)
    );
    println!(
        "time ratio ours / mkfs: {:.2} (mkfs alone), {:.2} (extraction + mkfs)",
        secs(ours) / secs(mkfs),
        secs(ours) / secs(extract + mkfs)
    );
    println!(
        "size ratio ours / mkfs: {:.4} (mtimes kept), {:.4} (-T0)",
        written.size as f64 / size(&mkfs_img) as f64,
        written.size as f64 / size(&mkfs_t0_img) as f64
    );
}
