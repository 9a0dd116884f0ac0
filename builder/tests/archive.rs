//! Base archives as GNU tar writes them (plain, gzip, zstd; PAX with xattrs) read into the tree
//! with every file type and its metadata, compared with `lstat` of the source tree; and a
//! hostile archive refused.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::Command;

use rke2_image::archive;
use rke2_image::tree::{Kind, Tree};

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A source tree with every file type tar can carry, long and odd names, hard links, setuid,
/// owners other than root, and an xattr.
fn source(root: &Path) {
    fs::create_dir_all(root.join("etc/deep/a/b/c")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("etc/big.bin"), &big).unwrap();
    let long = format!("etc/deep/a/b/c/{}", "n".repeat(180));
    fs::write(root.join(&long), "long name\n").unwrap();
    fs::write(root.join("etc/with space and ünïcode"), "x").unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd-link")).unwrap();
    symlink("../etc/passwd", root.join("etc/sym")).unwrap();
    symlink("/absolute/target", root.join("etc/abs-sym")).unwrap();
    sh(
        "mkfifo etc/fifo && mknod etc/null c 1 3 && mknod etc/blk b 7 9 \
         && chmod 4755 etc/big.bin && chmod 1777 etc/deep && chown 1234:5678 etc/empty \
         && touch -h -d @1600000000 etc/sym && touch -d @1500000000 etc/passwd",
        root,
    );
    // An xattr tar carries in PAX SCHILY.xattr records (user.* works on most filesystems).
    let _ = Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'user.rke2', b'value\\x00bin')",
        ])
        .arg(root.join("etc/passwd"))
        .status();
}

fn load(path: &Path) -> (Tree, archive::LoadStats) {
    let mut t = Tree::new(0);
    let stats = archive::load(path, &mut t).unwrap();
    (t, stats)
}

#[test]
fn gnu_tar_plain_gzip_and_zstd_read_the_same_tree_as_lstat_sees() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    source(&root);
    let has_xattr = xattr::get(root.join("etc/passwd"), "user.rke2")
        .ok()
        .flatten()
        .is_some();
    let tar = |name: &str, flag: &str| {
        let out = dir.path().join(name);
        sh(
            &format!(
                "tar --format=pax --xattrs --xattrs-include='*' --numeric-owner {flag} -cf '{}' -C root .",
                out.display()
            ),
            dir.path(),
        );
        out
    };
    let plain = tar("b.tar", "");
    let gz = tar("b.tar.gz", "--gzip");
    let zst = tar("b.tar.zst", "--zstd");
    let (t, stats) = load(&plain);
    for other in [&gz, &zst] {
        let (u, s) = load(other);
        assert_eq!(s.entries, stats.entries);
        let a: Vec<_> = t
            .iter()
            .map(|(p, id)| (p.to_vec(), t.inode(id).clone()))
            .collect();
        let b: Vec<_> = u
            .iter()
            .map(|(p, id)| (p.to_vec(), u.inode(id).clone()))
            .collect();
        assert_eq!(a.len(), b.len());
        for ((pa, ia), (pb, ib)) in a.iter().zip(&b) {
            assert_eq!(pa, pb);
            // Same metadata; contents compared below (blobs point into different archives).
            assert_eq!(
                (ia.mode, ia.uid, ia.gid, ia.mtime, &ia.xattrs),
                (ib.mode, ib.uid, ib.gid, ib.mtime, &ib.xattrs)
            );
            assert_eq!(ia.type_bits(), ib.type_bits());
        }
    }
    // The archive's sha256 is the file's.
    let sum = Command::new("sha256sum").arg(&zst).output().unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&load(&zst).1.sha256));

    // Every path against lstat of the source.
    let (t, _) = load(&zst);
    let nlinks = t.nlinks();
    for (p, id) in t.iter() {
        if p.is_empty() {
            continue;
        }
        let host = root.join(std::str::from_utf8(p).unwrap());
        let m = fs::symlink_metadata(&host).unwrap();
        let i = t.inode(id);
        assert_eq!(i.st_mode(), m.mode(), "{}", host.display());
        assert_eq!((i.uid, i.gid), (m.uid(), m.gid()), "{}", host.display());
        if !i.is_dir() {
            assert_eq!(i.mtime, m.mtime() as u64, "{}", host.display());
        }
        match &i.kind {
            Kind::File(_) => {
                assert_eq!(
                    t.read_file(p).unwrap(),
                    fs::read(&host).unwrap(),
                    "{}",
                    host.display()
                );
                assert_eq!(nlinks[id] as u64, m.nlink(), "{}", host.display());
            }
            Kind::Symlink(target) => {
                assert_eq!(
                    Path::new(std::str::from_utf8(target).unwrap()),
                    fs::read_link(&host).unwrap()
                )
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                let rdev = m.rdev();
                assert_eq!(
                    (*major as u64, *minor as u64),
                    (libc_major(rdev), libc_minor(rdev)),
                    "{}",
                    host.display()
                );
            }
            _ => {}
        }
    }
    assert_eq!(
        t.lookup(b"etc/passwd"),
        t.lookup(b"etc/passwd-link"),
        "hard link is one inode"
    );
    assert!(matches!(t.get(b"etc/fifo").unwrap().kind, Kind::Fifo));
    if has_xattr {
        assert_eq!(
            t.get(b"etc/passwd")
                .unwrap()
                .xattrs
                .get(&b"user.rke2"[..])
                .unwrap(),
            b"value\0bin"
        );
    } else {
        eprintln!(
            "note: the temp filesystem refused user xattrs; xattr round trip not checked here"
        );
    }
}

fn libc_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn libc_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

#[test]
fn hostile_and_foreign_inputs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // An entry climbing out of the root (GNU tar keeps it with -P).
    sh("mkdir -p a && echo x > a/f && tar -P --transform 's,^a/f,../../etc/evil,' -cf evil.tar a/f", dir.path());
    let mut t = Tree::new(0);
    let e = archive::load(&dir.path().join("evil.tar"), &mut t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("evil.tar") && e.contains(".."), "{e}");
    // Not an archive at all.
    fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let e = archive::load(&dir.path().join("notes.txt"), &mut Tree::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a tar, tar.gz or tar.zst archive"), "{e}");
    // Truncated compressed stream.
    sh(
        "tar --zstd -cf ok.tar.zst a && head -c 60 ok.tar.zst > cut.tar.zst",
        dir.path(),
    );
    assert!(archive::load(&dir.path().join("cut.tar.zst"), &mut Tree::new(0)).is_err());
}
