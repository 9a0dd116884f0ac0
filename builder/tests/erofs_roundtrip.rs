//! EROFS writer checked against erofs-utils (fsck.erofs, dump.erofs) and, where loop mounts
//! are permitted, the kernel.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_image::erofs::{self, Compression, ErofsError, Options};
use rke2_image::tree::{Blob, Inode, InodeId, Kind, Tree};

/// A file's bytes as the tree holds them, whatever their size (`Tree::read_file` is bounded for
/// the files the build reads whole; the round trip also has files larger than that).
fn blob_bytes(blob: &Blob) -> Vec<u8> {
    let mut out = Vec::new();
    Tree::read_blobs(&[((), blob)], &mut |_, r| {
        std::io::Read::read_to_end(r, &mut out).map(|_| ())
    })
    .unwrap();
    out
}

const BUILD_TIME: u64 = 1_700_000_000;

fn opts() -> Options {
    Options {
        uuid: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
        volume_name: "rke2-root".into(),
        build_time: BUILD_TIME,
    }
}

const LZ4HC: Compression = Compression::Lz4hc(9);

/// Compressible text (LZ4 shrinks it about 3x), different per seed.
fn text(len: usize, seed: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while v.len() < len {
        v.extend_from_slice(format!("{seed}: entry {} of group {}\n", i % 1013, i / 7).as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

/// Deterministic, non-repeating-per-block content.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn file(len: usize, seed: u8, mode: u32, mtime: u64) -> Inode {
    Inode::new(
        Kind::File(Blob::bytes(pattern(len, seed))),
        mode,
        0,
        0,
        mtime,
    )
}

fn symlink(target: &[u8]) -> Inode {
    Inode::new(Kind::Symlink(target.to_vec()), 0o777, 0, 0, 1_600_000_000)
}

/// A tree with every file type and most corner cases of the format.
fn sample_tree(host_dir: &Path) -> Tree {
    let mut t = Tree::new(BUILD_TIME);
    let root = t.root();
    t.inode_mut(root).xattrs.insert(
        b"security.selinux".to_vec(),
        b"system_u:object_r:root_t:s0\0".to_vec(),
    );

    // Sizes around the block size; the compact form (mtime == build time) and the extended one.
    for (name, len) in [
        (&b"empty"[..], 0usize),
        (b"one", 1),
        (b"f4095", 4095),
        (b"f4096", 4096),
        (b"f4097", 4097),
        (b"f8192", 8192),
        (b"f100000", 100_000),
    ] {
        t.insert(name, file(len, len as u8, 0o644, 1_650_000_000))
            .unwrap();
        let mut compact = file(len, len as u8 ^ 0x55, 0o600, BUILD_TIME);
        compact.uid = 1000;
        compact.gid = 100;
        t.insert(&[b"compact/", name].concat(), compact).unwrap();
    }
    // A file too big to inline its 4000-byte tail next to an inode with large xattrs.
    let mut crowded = file(8192 + 4000, 7, 0o644, 1_650_000_001);
    crowded.xattrs.insert(b"user.big".to_vec(), pattern(300, 9));
    t.insert(b"crowded", crowded).unwrap();
    // Inline xattrs larger than a block: the inode's metadata spans blocks.
    let mut heavy = file(100, 8, 0o644, 1_650_000_001);
    for i in 0..4 {
        heavy
            .xattrs
            .insert(format!("user.heavy{i}").into_bytes(), pattern(2000, i));
    }
    t.insert(b"heavy", heavy).unwrap();

    // All-zero blocks inside data (left as holes in a fresh output file) and an all-zero tail.
    let holes = [pattern(4096, 21), vec![0; 3 * 4096], pattern(10, 22)].concat();
    t.insert(
        b"holes",
        Inode::new(Kind::File(Blob::bytes(holes)), 0o644, 0, 0, 5),
    )
    .unwrap();
    t.insert(
        b"zeros",
        Inode::new(Kind::File(Blob::bytes(vec![0; 10_000])), 0o644, 0, 0, 5),
    )
    .unwrap();

    // A host file (streamed from disk, not memory).
    let host = host_dir.join("host.bin");
    fs::write(&host, pattern(3 * 1024 * 1024 + 123, 42)).unwrap();
    t.insert(
        b"usr/lib/host.bin",
        Inode::new(
            Kind::File(Blob::HostFile {
                path: host,
                len: 3 * 1024 * 1024 + 123,
            }),
            0o755,
            0,
            0,
            1_650_000_002,
        ),
    )
    .unwrap();

    // Special bits, owners beyond 16 bits.
    t.insert(b"usr/bin/su", file(5000, 1, 0o4755, 1_650_000_003))
        .unwrap();
    t.insert(b"usr/bin/wall", file(300, 2, 0o2755, 1_650_000_004))
        .unwrap();
    t.insert(b"tmp", Inode::dir(0o1777, 1_650_000_005)).unwrap();
    let mut sgid_dir = Inode::dir(0o2775, 1_650_000_006);
    sgid_dir.uid = 100_000;
    sgid_dir.gid = 200_000;
    t.insert(b"srv/shared", sgid_dir).unwrap();
    let mut owned = file(10, 3, 0o640, 1_650_000_007);
    owned.uid = 65_536;
    owned.gid = 4_000_000_000;
    t.insert(b"srv/shared/owned", owned).unwrap();

    // Devices, fifo, socket.
    t.insert(
        b"dev/null",
        Inode::new(
            Kind::CharDev { major: 1, minor: 3 },
            0o666,
            0,
            0,
            1_650_000_008,
        ),
    )
    .unwrap();
    t.insert(
        b"dev/sda1",
        Inode::new(
            Kind::BlockDev { major: 8, minor: 1 },
            0o660,
            0,
            6,
            1_650_000_009,
        ),
    )
    .unwrap();
    t.insert(
        b"dev/nvme-big",
        Inode::new(
            Kind::BlockDev {
                major: 259,
                minor: 0x12345,
            },
            0o600,
            0,
            0,
            1_650_000_010,
        ),
    )
    .unwrap();
    t.insert(
        b"run/fifo",
        Inode::new(Kind::Fifo, 0o620, 5, 5, 1_650_000_011),
    )
    .unwrap();
    t.insert(
        b"run/sock",
        Inode::new(Kind::Socket, 0o755, 0, 0, 1_650_000_012),
    )
    .unwrap();

    // Symlinks: short (inline), long (still inline), longest allowed target.
    t.insert(b"lib", symlink(b"usr/lib")).unwrap();
    t.insert(b"links/long", symlink(&vec![b'x'; 3000])).unwrap();
    t.insert(b"links/max", symlink(&vec![b'y'; 4095])).unwrap();
    let mut labelled_link = symlink(b"../etc/hostname");
    labelled_link.xattrs.insert(
        b"security.selinux".to_vec(),
        b"system_u:object_r:etc_t:s0\0".to_vec(),
    );
    t.insert(b"links/labelled", labelled_link).unwrap();

    // Odd names (sorting before and after "." and ".."), a 255-byte name, non-UTF-8.
    let long_name = vec![b'n'; 255];
    for (i, name) in [
        &b"with space"[..],
        b"new\nline",
        b"\xff\xfe not utf8",
        b"-dash",
        b"!bang",
        b"...",
        b".hidden",
        b"tab\there",
        &long_name,
    ]
    .iter()
    .enumerate()
    {
        t.insert(
            &[b"odd/", *name].concat(),
            file(i * 7 + 1, i as u8, 0o644, 1_650_000_100),
        )
        .unwrap();
    }

    // Deep path.
    let deep: Vec<u8> = (0..80)
        .map(|i| format!("level{i:02}"))
        .collect::<Vec<_>>()
        .join("/")
        .into_bytes();
    t.insert(
        &[&deep[..], b"/bottom"].concat(),
        file(77, 77, 0o644, 1_650_000_200),
    )
    .unwrap();

    // Hard links: one inode, three names in two directories.
    t.insert(b"hl/a", file(6000, 11, 0o755, 1_650_000_300))
        .unwrap();
    t.link(b"hl/b", b"hl/a").unwrap();
    t.link(b"other/c", b"hl/a").unwrap();
    t.insert(b"hl/empty1", file(0, 0, 0o644, 1_650_000_301))
        .unwrap();
    t.link(b"hl/empty2", b"hl/empty1").unwrap();

    // xattrs of every supported namespace.
    let mut labelled = file(1234, 12, 0o644, 1_650_000_400);
    labelled.xattrs.insert(
        b"security.selinux".to_vec(),
        b"system_u:object_r:etc_t:s0\0".to_vec(),
    );
    labelled
        .xattrs
        .insert(b"user.comment".to_vec(), b"hello".to_vec());
    labelled
        .xattrs
        .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
    labelled.xattrs.insert(
        b"security.capability".to_vec(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    t.insert(b"etc/labelled", labelled).unwrap();
    let mut labelled_dir = Inode::dir(0o755, 1_650_000_401);
    labelled_dir.xattrs.insert(
        b"security.selinux".to_vec(),
        b"system_u:object_r:etc_t:s0\0".to_vec(),
    );
    labelled_dir
        .xattrs
        .insert(b"user.empty".to_vec(), Vec::new());
    t.insert(b"etc", labelled_dir).unwrap();

    // A directory spanning several blocks, with subdirectories for nlink.
    for i in 0..1500 {
        let name = format!("many/entry-{i:05}-{}", "z".repeat(i % 40));
        t.insert(name.as_bytes(), file(i % 50, i as u8, 0o644, 1_650_000_500))
            .unwrap();
    }
    for i in 0..20 {
        t.insert(
            format!("many/sub{i:02}").as_bytes(),
            Inode::dir(0o700, 1_650_000_501),
        )
        .unwrap();
    }
    // Compressible files: around the block size, whole blocks, across mkfs.erofs's 1.8 MiB
    // input window, past the 32 MiB in-memory limit, text and noise mixed (PLAIN pclusters in
    // the middle), labelled, hard-linked, with a 32-bit owner, and one that does not shrink.
    for (i, len) in [4097usize, 8192, 12_288, 20_000, 100_000, 2_500_000]
        .into_iter()
        .enumerate()
    {
        let mut f = Inode::new(
            Kind::File(Blob::bytes(text(len, i as u32))),
            0o644,
            0,
            0,
            1_650_000_600,
        );
        f.xattrs.insert(
            b"security.selinux".to_vec(),
            b"system_u:object_r:usr_t:s0\0".to_vec(),
        );
        t.insert(format!("z/text-{len}").as_bytes(), f).unwrap();
    }
    let big = text(33 << 20, 99);
    t.insert(
        b"z/big",
        Inode::new(Kind::File(Blob::bytes(big)), 0o755, 0, 0, 1_650_000_601),
    )
    .unwrap();
    let mixed = [
        text(50_000, 7),
        pattern(3 * 4096 + 100, 7),
        text(30_001, 8),
        pattern(2000, 8),
    ]
    .concat();
    let mut mixed = Inode::new(Kind::File(Blob::bytes(mixed)), 0o640, 70_000, 70_001, 5);
    mixed
        .xattrs
        .insert(b"user.note".to_vec(), b"mixed".to_vec());
    t.insert(b"z/mixed", mixed).unwrap();
    t.link(b"z/mixed-link", b"z/mixed").unwrap();
    t.insert(b"z/noise", file(300_000, 31, 0o644, 1_650_000_602))
        .unwrap();
    t
}

fn path_of(dir: &Path, p: &[u8]) -> PathBuf {
    if p.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(OsStr::from_bytes(p))
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// fsck.erofs 1.5 prints nothing and exits 0 on some failures (a bad superblock checksum)
/// unless given a message level, so errors are also looked for in its output.
fn fsck(img: &Path, extract: Option<&Path>) -> String {
    let mut cmd = Command::new("fsck.erofs");
    cmd.arg("-d2");
    if let Some(dir) = extract {
        cmd.arg(format!("--extract={}", dir.display()))
            .arg("--preserve");
    }
    let out = run(cmd.arg(img));
    assert!(
        !out.contains("<E>"),
        "fsck.erofs found errors in {img:?}:\n{out}"
    );
    out
}

fn write_image(tree: &Tree, img: &Path) -> erofs::Written {
    write_image_z(tree, img, Compression::None)
}

fn write_image_z(tree: &Tree, img: &Path, c: Compression) -> erofs::Written {
    let plan = erofs::plan_compressed(tree, &opts(), c).unwrap();
    let f = File::create(img).unwrap();
    let w = erofs::write(tree, &plan, &f, 0, plan.size()).unwrap();
    if c == Compression::None {
        assert_eq!(w.size, plan.size());
    } else {
        // The uncompressed layout bounds the compressed one.
        assert!(w.size <= plan.size(), "{} > {}", w.size, plan.size());
    }
    assert_eq!(f.metadata().unwrap().len(), w.size);
    w
}

/// Compares what a reader of the image shows at `dir` with the tree: type, permissions, owner,
/// mtime, size, device numbers, symlink targets, contents and (with `kernel`) setuid/setgid,
/// directory mtimes, hard-link identity and link counts.
fn compare(tree: &Tree, dir: &Path, kernel: bool) {
    let nlinks = tree.nlinks();
    let mut ino_of: HashMap<InodeId, u64> = HashMap::new();
    let mut id_of: HashMap<u64, InodeId> = HashMap::new();
    for (p, id) in tree.iter() {
        let at = path_of(dir, p);
        let inode = tree.inode(id);
        let md = fs::symlink_metadata(&at).unwrap_or_else(|e| panic!("{at:?}: {e}"));
        assert_eq!(md.mode() & 0o170000, inode.type_bits(), "{at:?} type");
        // fsck.erofs 1.5 chowns after chmod, which drops setuid/setgid on extraction.
        let perm_mask = if kernel { 0o7777 } else { 0o1777 };
        if !matches!(inode.kind, Kind::Symlink(_)) {
            assert_eq!(md.mode() & perm_mask, inode.mode & perm_mask, "{at:?} mode");
        }
        assert_eq!((md.uid(), md.gid()), (inode.uid, inode.gid), "{at:?} owner");
        if kernel || !inode.is_dir() {
            assert_eq!(md.mtime() as u64, inode.mtime, "{at:?} mtime");
        }
        match &inode.kind {
            Kind::File(blob) => {
                assert_eq!(md.len(), inode.size(), "{at:?} size");
                let want = blob_bytes(blob);
                let got = fs::read(&at).unwrap();
                assert!(got == want, "{at:?} content differs");
                if kernel {
                    assert_eq!(md.nlink(), u64::from(nlinks[id]), "{at:?} nlink");
                }
            }
            Kind::Symlink(target) => {
                assert_eq!(
                    fs::read_link(&at).unwrap().as_os_str().as_bytes(),
                    &target[..]
                );
                assert_eq!(md.len(), target.len() as u64, "{at:?} size");
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                let rdev = md.rdev();
                let (ma, mi) = (
                    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
                    (rdev & 0xff) | ((rdev >> 12) & !0xff),
                );
                assert_eq!((ma as u32, mi as u32), (*major, *minor), "{at:?} rdev");
            }
            Kind::Dir => {
                assert_eq!(md.nlink(), u64::from(nlinks[id]), "{at:?} nlink");
            }
            Kind::Fifo | Kind::Socket => {}
        }
        if kernel && !inode.is_dir() {
            let prev = ino_of.insert(id, md.ino());
            assert!(
                prev.is_none() || prev == Some(md.ino()),
                "{at:?}: hard link split"
            );
            let other = id_of.insert(md.ino(), id);
            assert!(
                other.is_none() || other == Some(id),
                "{at:?}: inodes merged"
            );
        }
    }
    // Nothing extra: every directory holds exactly the tree's names.
    for (d, kids) in tree.children() {
        let mut names: Vec<Vec<u8>> = fs::read_dir(path_of(dir, d))
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        let want: Vec<Vec<u8>> = kids.iter().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, want, "entries of /{}", String::from_utf8_lossy(d));
    }
}

#[test]
fn fsck_extract_reproduces_tree() {
    fsck_extract_reproduces_tree_with(Compression::None);
}

#[test]
fn fsck_extract_reproduces_tree_lz4hc() {
    fsck_extract_reproduces_tree_with(LZ4HC);
}

#[test]
fn fsck_extract_reproduces_tree_lz4() {
    fsck_extract_reproduces_tree_with(Compression::Lz4);
}

fn fsck_extract_reproduces_tree_with(c: Compression) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let img = tmp.path().join("root.erofs");
    let w = write_image_z(&tree, &img, c);
    assert_eq!(w.inodes as usize, tree.unique_inodes().len());
    assert_eq!(w.blocks * 4096, w.size);

    fsck(&img, None);
    let out = tmp.path().join("out");
    fsck(&img, Some(&out));
    // fsck.erofs 1.5 sets directory times before filling them and extracts hard links as
    // separate files; dump_erofs_agrees_on_inodes and the mount test cover those.
    compare(&tree, &out, false);
}

fn dump_field<'a>(out: &'a str, key: &str) -> &'a str {
    let start = out
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} not in dump.erofs output:\n{out}"))
        + key.len();
    out[start..].split_whitespace().next().unwrap_or("")
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of epoch seconds, as dump.erofs prints with TZ=UTC.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn dump_erofs_agrees_on_inodes() {
    dump_erofs_agrees_on_inodes_with(Compression::None);
}

#[test]
fn dump_erofs_agrees_on_inodes_lz4hc() {
    dump_erofs_agrees_on_inodes_with(LZ4HC);
}

#[test]
fn dump_erofs_agrees_on_inodes_lz4() {
    dump_erofs_agrees_on_inodes_with(Compression::Lz4);
}

fn dump_erofs_agrees_on_inodes_with(c: Compression) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let img = tmp.path().join("root.erofs");
    let w = write_image_z(&tree, &img, c);

    let sb = run(Command::new("dump.erofs").arg("-s").arg(&img));
    assert_eq!(dump_field(&sb, "Filesystem blocks:"), w.blocks.to_string());
    assert_eq!(
        dump_field(&sb, "Filesystem inode count:"),
        w.inodes.to_string()
    );
    assert_eq!(
        dump_field(&sb, "Filesystem UUID:"),
        "01234567-89ab-cdef-fedc-ba9876543210"
    );
    assert!(sb.contains("sb_csum"), "{sb}");

    let nlinks = tree.nlinks();
    let mut root_nid = None;
    // Hard links: every name of an inode resolves to one nid, different inodes to different ones.
    let mut nid_of: HashMap<InodeId, String> = HashMap::new();
    let mut id_of: HashMap<String, InodeId> = HashMap::new();
    for (p, id) in tree.iter() {
        if p.contains(&b'\n') || tree.inode(id).is_dir() {
            continue;
        }
        let arg = [&b"--path=/"[..], p].concat();
        let out = run(Command::new("dump.erofs")
            .arg(OsStr::from_bytes(&arg))
            .arg(&img));
        let nid = dump_field(&out, "NID:").to_string();
        assert_eq!(nid_of.entry(id).or_insert(nid.clone()), &nid, "{out}");
        assert_eq!(*id_of.entry(nid).or_insert(id), id, "{out}");
    }
    let hl = tree.lookup(b"hl/a").unwrap();
    assert_eq!(nid_of[&hl], nid_of[&tree.lookup(b"other/c").unwrap()]);
    for (p, id) in tree.unique_inodes() {
        // dump.erofs walks paths with its own lookup; names with newlines would break the
        // line-oriented output check, so those are covered by the extract test instead.
        if p.contains(&b'\n') {
            continue;
        }
        let inode = tree.inode(id);
        let arg = [&b"--path=/"[..], p].concat();
        let out = run(Command::new("dump.erofs")
            .arg(OsStr::from_bytes(&arg))
            .arg(&img)
            .env("TZ", "UTC"));
        let size = match inode.kind {
            Kind::Dir => None,
            _ => Some(inode.size()),
        };
        if let Some(size) = size {
            assert_eq!(dump_field(&out, "Size:"), size.to_string(), "/{p:?} size");
        }
        assert_eq!(dump_field(&out, "Links:"), nlinks[id].to_string(), "{out}");
        assert_eq!(dump_field(&out, "Uid:"), inode.uid.to_string(), "{out}");
        assert_eq!(dump_field(&out, "Gid:"), inode.gid.to_string(), "{out}");
        let access = dump_field(&out, "Access:");
        assert_eq!(
            access.split('/').next().unwrap(),
            format!("{:04o}", inode.mode & 0o777), // dump.erofs prints permission bits only
            "{out}"
        );
        assert!(
            out.contains(&utc(inode.mtime)),
            "mtime {}:\n{out}",
            utc(inode.mtime)
        );
        let xattr_size: u64 = dump_field(&out, "Xattr size:").parse().unwrap();
        assert_eq!(xattr_size > 0, !inode.xattrs.is_empty(), "{out}");
        if p.is_empty() {
            root_nid = Some(dump_field(&out, "NID:").to_string());
        }
        // The same inode looked up by nid.
        let nid = dump_field(&out, "NID:").to_string();
        let by_nid = run(Command::new("dump.erofs")
            .arg(format!("--nid={nid}"))
            .arg(&img)
            .env("TZ", "UTC"));
        assert_eq!(dump_field(&by_nid, "Links:"), nlinks[id].to_string());
    }
    assert_eq!(
        root_nid.as_deref(),
        Some(dump_field(&sb, "Filesystem root nid:"))
    );
}

#[test]
fn output_is_deterministic_and_overwrites_old_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let a = tmp.path().join("a.erofs");
    write_image(&tree, &a);
    let plan = erofs::plan(&tree, &opts()).unwrap();

    // Same tree into the middle of a file full of garbage: identical bytes in the region.
    let b = tmp.path().join("b.img");
    let offset = 3 * 1024 * 1024;
    let total = offset + plan.size() + 8192;
    {
        let mut f = File::create(&b).unwrap();
        let junk = vec![0xA5u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(junk.len() as u64) as usize;
            f.write_all(&junk[..n]).unwrap();
            left -= n as u64;
        }
    }
    let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
    erofs::write(&tree, &plan, &f, offset, plan.size()).unwrap();
    drop(f);
    let whole = fs::read(&b).unwrap();
    let first = fs::read(&a).unwrap();
    assert!(whole[offset as usize..(offset + plan.size()) as usize] == first[..]);
    assert!(whole[..offset as usize].iter().all(|&x| x == 0xA5));
    assert!(whole[(offset + plan.size()) as usize..]
        .iter()
        .all(|&x| x == 0xA5));

    // A tree built again from scratch gives the same bytes.
    let again = tmp.path().join("again.erofs");
    write_image(&sample_tree(tmp.path()), &again);
    assert!(fs::read(&again).unwrap() == first);

    // Different options change the superblock only where expected.
    let mut o = opts();
    o.uuid[0] ^= 0xff;
    let p2 = erofs::plan(&tree, &o).unwrap();
    let c = tmp.path().join("c.erofs");
    erofs::write(&tree, &p2, &File::create(&c).unwrap(), 0, u64::MAX).unwrap();
    let third = fs::read(&c).unwrap();
    let diff: Vec<usize> = (0..first.len()).filter(|&i| first[i] != third[i]).collect();
    assert!(diff
        .iter()
        .all(|&i| (1024 + 4..1024 + 8).contains(&i) || i == 1024 + 48));
    fsck(&c, None);
}

#[test]
fn superblock_checksum_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(BUILD_TIME);
    t.insert(b"a", file(100, 1, 0o644, 1)).unwrap();
    let img = tmp.path().join("sb.erofs");
    write_image(&t, &img);
    fsck(&img, None);
    // The last byte of the volume name: unused by any reader, covered only by the checksum.
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(b"!", 1024 + 79).unwrap();
    drop(f);
    let out = Command::new("fsck.erofs")
        .arg("-d2")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("chksum doesn't match"),
        "fsck.erofs accepted a corrupted superblock: {text}"
    );
    // The kernel refuses it too.
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap();
    if mounted.success() {
        let _ = Command::new("umount").arg(&mnt).status();
        panic!("the kernel mounted an image with a corrupted superblock");
    }
}

#[test]
fn too_large_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let plan = erofs::plan(&tree, &opts()).unwrap();
    let img = tmp.path().join("small.img");
    let f = File::create(&img).unwrap();
    f.write_all_at(b"keep", 0).unwrap();
    let err = erofs::write(&tree, &plan, &f, 0, plan.size() - 4096).unwrap_err();
    match err {
        ErofsError::TooLarge { needed, available } => {
            assert_eq!(needed, plan.size());
            assert_eq!(available, plan.size() - 4096);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert_eq!(fs::read(&img).unwrap(), b"keep");
}

#[test]
fn refuses_what_erofs_cannot_hold() {
    let mut t = Tree::new(0);
    let mut x = Inode::new(Kind::Fifo, 0o644, 0, 0, 0);
    x.xattrs.insert(b"system.unknown".to_vec(), b"v".to_vec());
    t.insert(b"x", x).unwrap();
    let e = erofs::plan(&t, &opts()).unwrap_err();
    assert!(e.to_string().contains("system.unknown"), "{e}");

    let mut t = Tree::new(0);
    t.insert(&vec![b'a'; 256], Inode::new(Kind::Fifo, 0o644, 0, 0, 0))
        .unwrap();
    assert!(matches!(
        erofs::plan(&t, &opts()),
        Err(ErofsError::NameTooLong { len: 256, .. })
    ));

    let mut o = opts();
    o.volume_name = "x".repeat(17);
    assert!(matches!(
        erofs::plan(&Tree::new(0), &o),
        Err(ErofsError::VolumeName { .. })
    ));
}

#[test]
fn file_over_4_gib() {
    let tmp = tempfile::tempdir().unwrap();
    // A sparse source: 4 GiB + 12289 bytes with data at the start, around the 4 GiB mark and
    // in the last (partial) block.
    let src = tmp.path().join("big.src");
    let len: u64 = (4 << 30) + 12_289;
    let f = File::create(&src).unwrap();
    f.set_len(len).unwrap();
    let marks: [(u64, Vec<u8>); 3] = [
        (0, pattern(4096, 1)),
        ((4 << 30) - 4096, pattern(8192, 2)),
        (len - 5000, pattern(5000, 3)),
    ];
    for (at, data) in &marks {
        f.write_all_at(data, *at).unwrap();
    }
    drop(f);
    let mut t = Tree::new(BUILD_TIME);
    t.insert(
        b"big",
        Inode::new(
            Kind::File(Blob::HostFile {
                path: src.clone(),
                len,
            }),
            0o644,
            0,
            0,
            9,
        ),
    )
    .unwrap();
    t.insert(b"zz-after", file(5000, 4, 0o644, 9)).unwrap();
    let img = tmp.path().join("big.erofs");
    let w = write_image(&t, &img);
    assert!(w.size > len);
    // Holes stay holes: only the marked blocks and metadata take space.
    let used = fs::metadata(&img).unwrap().blocks() * 512;
    assert!(used < 1 << 20, "image uses {used} bytes on disk");

    let out = run(Command::new("dump.erofs").arg("--path=/big").arg(&img));
    assert_eq!(dump_field(&out, "Size:"), len.to_string(), "{out}");
    assert_eq!(dump_field(&out, "Inode size:"), "64", "{out}");
    fsck(&img, None);

    let mnt = tmp.path().join("mnt");
    let Some(_m) = Mount::new(&img, &mnt) else {
        return;
    };
    let big = File::open(mnt.join("big")).unwrap();
    assert_eq!(big.metadata().unwrap().len(), len);
    for (at, data) in &marks {
        let mut got = vec![0u8; data.len() + 8192];
        let start = at.saturating_sub(4096);
        let n = big.read_at(&mut got, start).unwrap();
        let want_len = ((len - start) as usize).min(got.len());
        let mut want = vec![0u8; want_len];
        File::open(&src)
            .unwrap()
            .read_exact_at(&mut want, start)
            .unwrap();
        assert!(n > 0 && got[..n] == want[..n], "bytes at {start}");
    }
    assert_eq!(
        fs::read(mnt.join("zz-after")).unwrap(),
        pattern(5000, 4),
        "file after the big one"
    );
}

/// Loop-mounts an image read-only; unmounts on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(img: &Path, at: &Path) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(img)
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
            Ok(o) => {
                rke2_testsupport::prereq::missing(format!(
                    "a loop-mounted EROFS (mount -t erofs -o loop: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                rke2_testsupport::prereq::missing(format!("program `mount` (util-linux): {e}"));
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn kernel_mount_shows_tree_and_xattrs() {
    kernel_mount_shows_tree_and_xattrs_with(Compression::None);
}

#[test]
fn kernel_mount_shows_tree_and_xattrs_lz4hc() {
    kernel_mount_shows_tree_and_xattrs_with(LZ4HC);
}

#[test]
fn kernel_mount_shows_tree_and_xattrs_lz4() {
    kernel_mount_shows_tree_and_xattrs_with(Compression::Lz4);
}

fn kernel_mount_shows_tree_and_xattrs_with(c: Compression) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let img = tmp.path().join("root.erofs");
    write_image_z(&tree, &img, c);
    let mnt = tmp.path().join("mnt");
    let Some(_m) = Mount::new(&img, &mnt) else {
        return;
    };
    compare(&tree, &mnt, true);
    for (p, id) in tree.iter() {
        let inode = tree.inode(id);
        let at = path_of(&mnt, p);
        let mut got: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for name in xattr::list(&at).unwrap() {
            let v = xattr::get(&at, &name).unwrap().unwrap_or_default();
            got.insert(name.as_bytes().to_vec(), v);
        }
        assert_eq!(got, inode.xattrs, "xattrs of {at:?}");
    }
}

fn base_tarball() -> Option<PathBuf> {
    rke2_testsupport::prereq::test_base()
}

#[test]
fn debian_base_passes_fsck_and_extracts() {
    debian_base_passes_fsck_and_extracts_with(Compression::None);
}

#[test]
fn debian_base_passes_fsck_and_extracts_lz4hc() {
    debian_base_passes_fsck_and_extracts_with(LZ4HC);
}

fn debian_base_passes_fsck_and_extracts_with(c: Compression) {
    let Some(base) = base_tarball() else {
        return;
    };
    let mut tree = Tree::new(0);
    rke2_image::archive::load(&base, &mut tree).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("base.erofs");
    let w = write_image_z(&tree, &img, c);
    println!("base: {} inodes, {} bytes", w.inodes, w.size);
    fsck(&img, None);
    let out = tmp.path().join("out");
    fsck(&img, Some(&out));

    // A sample of paths (every 37th, plus well-known ones) against the tarball's tree; file
    // contents come from one more pass over the archive.
    let known = [&b"etc/os-release"[..], b"usr/bin/bash", b"etc/passwd"];
    let sample: Vec<(&[u8], InodeId)> = tree
        .iter()
        .enumerate()
        .filter(|(i, (p, _))| !p.is_empty() && (i % 37 == 0 || known.contains(p)))
        .map(|(_, e)| e)
        .collect();
    assert!(sample.len() > 100, "sample too small");
    for &(p, id) in &sample {
        let inode = tree.inode(id);
        let at = path_of(&out, p);
        let md = fs::symlink_metadata(&at).unwrap_or_else(|e| panic!("{at:?}: {e}"));
        assert_eq!(md.mode() & 0o170000, inode.type_bits(), "{at:?}");
        if !matches!(inode.kind, Kind::Symlink(_)) {
            // See compare(): fsck.erofs drops setuid/setgid when extracting.
            assert_eq!(md.mode() & 0o1777, inode.mode & 0o1777, "{at:?}");
        }
        assert_eq!((md.uid(), md.gid()), (inode.uid, inode.gid), "{at:?}");
        match &inode.kind {
            Kind::File(blob) => {
                assert_eq!(md.mtime() as u64, inode.mtime, "{at:?}");
                assert_eq!(md.len(), blob.len(), "{at:?}");
            }
            Kind::Symlink(t) => {
                assert_eq!(fs::read_link(&at).unwrap().as_os_str().as_bytes(), &t[..]);
            }
            _ => {}
        }
    }
    // Every file's content (each inode once), not only the sample's.
    let files: Vec<(&[u8], &Blob)> = tree
        .unique_inodes()
        .into_iter()
        .filter_map(|(p, id)| match &tree.inode(id).kind {
            Kind::File(b) => Some((p, b)),
            _ => None,
        })
        .collect();
    let blobs: Vec<(usize, &Blob)> = files.iter().enumerate().map(|(i, f)| (i, f.1)).collect();
    let mut compared = 0;
    Tree::read_blobs(&blobs, &mut |i, r| {
        let mut want = Vec::new();
        r.read_to_end(&mut want)?;
        let at = path_of(&out, files[i].0);
        assert!(fs::read(&at)? == want, "{at:?} content differs");
        compared += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(compared, files.len());
    println!(
        "base: compared {} sampled paths, {compared} file contents",
        sample.len()
    );
}

/// The kernel the images boot (Debian's 6.1, from the base tarball) reads the sample image: a
/// QEMU guest loop-mounts it and sends it back as a tar stream over a second serial port, which
/// is compared with the tree (types, modes incl. setuid, owners, mtimes, device numbers,
/// symlink targets, hard links, contents).
#[test]
fn debian_kernel_reads_image() {
    debian_kernel_reads_image_with(Compression::None);
}

#[test]
fn debian_kernel_reads_image_lz4hc() {
    debian_kernel_reads_image_with(LZ4HC);
}

fn debian_kernel_reads_image_with(c: Compression) {
    let Some(base) = base_tarball() else {
        return;
    };
    let mut base_tree = Tree::new(0);
    rke2_image::archive::load(&base, &mut base_tree).unwrap();
    let wanted_suffixes: [&[u8]; 4] = [
        b"/kernel/crypto/crc32c_generic.ko",
        b"/kernel/lib/libcrc32c.ko",
        b"/kernel/fs/erofs/erofs.ko",
        b"/kernel/drivers/block/loop.ko",
    ];
    let mut wanted: Vec<(usize, &Blob)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (p, id) in base_tree.iter() {
        let blob = match &base_tree.inode(id).kind {
            Kind::File(b) => b,
            _ => continue,
        };
        let name = if p.starts_with(b"boot/vmlinuz-") {
            "vmlinuz".to_string()
        } else if let Some(s) = wanted_suffixes.iter().find(|s| p.ends_with(s)) {
            let file = s.rsplit(|&b| b == b'/').next().unwrap();
            String::from_utf8_lossy(file).into_owned()
        } else {
            continue;
        };
        if !names.contains(&name) {
            names.push(name);
            wanted.push((names.len() - 1, blob));
        }
    }
    assert_eq!(
        names.len(),
        5,
        "kernel or modules missing from the base: {names:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("initramfs");
    fs::create_dir_all(stage.join("bin")).unwrap();
    fs::create_dir_all(stage.join("mods")).unwrap();
    let kernel = tmp.path().join("vmlinuz");
    Tree::read_blobs(&wanted, &mut |i, r| {
        let dest = if names[i] == "vmlinuz" {
            kernel.clone()
        } else {
            stage.join("mods").join(&names[i])
        };
        std::io::copy(r, &mut File::create(dest)?)?;
        Ok(())
    })
    .unwrap();

    let tree = sample_tree(tmp.path());
    write_image_z(&tree, &stage.join("root.erofs"), c);
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is needed");
    fs::copy(busybox, stage.join("bin/busybox")).unwrap();
    let init = "#!/bin/busybox sh\n\
        B=/bin/busybox\n\
        $B mkdir -p /proc /dev /mnt\n\
        $B mount -t devtmpfs dev /dev\n\
        $B mount -t proc proc /proc\n\
        for m in crc32c_generic libcrc32c erofs loop; do $B insmod /mods/$m.ko || echo INSMOD-FAIL $m; done\n\
        if $B mount -t erofs -o loop,ro /root.erofs /mnt; then echo MOUNT-OK; else echo MOUNT-FAIL; fi\n\
        $B stty -F /dev/ttyS1 raw -echo\n\
        cd /mnt && $B tar -cf /dev/ttyS1 . && echo TAR-OK\n\
        $B poweroff -f\n";
    fs::write(stage.join("init"), init).unwrap();
    let mut perms = fs::metadata(stage.join("init")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(stage.join("init"), perms).unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        stage.display(),
        initrd.display()
    )));

    let console = tmp.path().join("console.txt");
    let tar_out = tmp.path().join("guest.tar");
    // Generous: under TCG on 2 shared cores two of these guests run at once beside other tests
    // (one took over 240 s while a cluster suite ran).
    let mut qemu = Command::new("timeout");
    qemu.args(["600", "qemu-system-x86_64", "-m", "512", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", tar_out.display()));
    // TCG: boots in seconds, and KVM hangs on some nested hosts (this one included).
    qemu.args(["-accel", "tcg"]);
    run(&mut qemu);
    let log = fs::read_to_string(&console).unwrap_or_default();
    assert!(
        log.contains("MOUNT-OK") && log.contains("TAR-OK"),
        "guest console:\n{log}"
    );

    let nlinks_seen = compare_tar(&tree, &fs::read(&tar_out).unwrap());
    assert!(nlinks_seen > 0, "no hard links came back");
}

/// Checks a tar stream of the mounted image against the tree; returns how many hard-link
/// entries it held.
fn compare_tar(tree: &Tree, data: &[u8]) -> usize {
    let mut seen: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    let mut hard_links = 0;
    let mut ar = tar::Archive::new(data);
    for entry in ar.entries().unwrap() {
        let mut e = entry.unwrap();
        let raw = e.path_bytes().into_owned();
        let p = raw.strip_prefix(b"./").unwrap_or(&raw);
        let p = p.strip_suffix(b"/").unwrap_or(p).to_vec();
        let p = if p == b"." { Vec::new() } else { p };
        let id = tree.lookup(&p).unwrap_or_else(|| {
            panic!(
                "guest has {:?}, the tree does not",
                String::from_utf8_lossy(&p)
            )
        });
        let inode = tree.inode(id);
        let h = e.header().clone();
        let what = String::from_utf8_lossy(&p).into_owned();
        // ustar's 7 octal digits cannot carry larger ids (busybox tar writes garbage); the
        // host mount test covers those.
        if inode.uid <= 0o7777777 {
            assert_eq!(h.uid().unwrap() as u32, inode.uid, "{what} uid");
        }
        if inode.gid <= 0o7777777 {
            assert_eq!(h.gid().unwrap() as u32, inode.gid, "{what} gid");
        }
        let kind = h.entry_type();
        if kind.is_hard_link() {
            let target = e.link_name_bytes().unwrap().into_owned();
            let t = target.strip_prefix(b"./").unwrap_or(&target);
            assert_eq!(tree.lookup(t), Some(id), "{what} hard link target");
            hard_links += 1;
            seen.insert(p, ());
            continue;
        }
        assert_eq!(h.mtime().unwrap(), inode.mtime, "{what} mtime");
        if !matches!(inode.kind, Kind::Symlink(_)) {
            assert_eq!(h.mode().unwrap() & 0o7777, inode.mode, "{what} mode");
        }
        match &inode.kind {
            Kind::Dir => assert!(kind.is_dir(), "{what} type"),
            Kind::File(blob) => {
                assert!(kind.is_file(), "{what} type");
                let mut got = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut got).unwrap();
                assert!(got == blob_bytes(blob), "{what} content");
            }
            Kind::Symlink(t) => {
                assert!(kind.is_symlink(), "{what} type");
                assert_eq!(&e.link_name_bytes().unwrap()[..], &t[..], "{what} target");
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                assert!(kind.is_character_special() || kind.is_block_special());
                assert_eq!(
                    (h.device_major().unwrap(), h.device_minor().unwrap()),
                    (Some(*major), Some(*minor)),
                    "{what} device"
                );
            }
            Kind::Fifo => assert!(kind.is_fifo(), "{what} type"),
            Kind::Socket => panic!("tar does not archive sockets"),
        }
        seen.insert(p, ());
    }
    for (p, id) in tree.iter() {
        if !matches!(tree.inode(id).kind, Kind::Socket) {
            assert!(
                seen.contains_key(p),
                "{:?} missing in the guest",
                String::from_utf8_lossy(p)
            );
        }
    }
    hard_links
}

/// Compressed files really are compressed (dump.erofs's on-disk size and the image size), the
/// ones that cannot shrink are not, and the bytes do not depend on the thread count.
#[test]
fn compressed_layout_is_deterministic_and_smaller() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let flat = tmp.path().join("flat.erofs");
    let wf = write_image(&tree, &flat);
    let plan = erofs::plan_compressed(&tree, &opts(), LZ4HC).unwrap();
    let mut images = Vec::new();
    for threads in [1, 2, 5] {
        let img = tmp.path().join(format!("z{threads}.erofs"));
        let f = File::create(&img).unwrap();
        erofs::write_with_threads(&tree, &plan, &f, 0, u64::MAX, threads).unwrap();
        images.push(fs::read(&img).unwrap());
    }
    assert!(images[0] == images[1] && images[1] == images[2]);
    let again = tmp.path().join("again.erofs");
    write_image_z(&sample_tree(tmp.path()), &again, LZ4HC);
    assert!(fs::read(&again).unwrap() == images[0]);
    let z = tmp.path().join("z1.erofs");
    println!(
        "uncompressed {} bytes, lz4hc {} bytes",
        wf.size,
        images[0].len()
    );
    assert!((images[0].len() as u64) < wf.size / 2);
    for (path, compressed) in [
        ("/z/big", true),
        ("/z/text-100000", true),
        ("/z/mixed", true),
        ("/z/text-4097", false),
        ("/z/noise", false),
        ("/f4096", false),
    ] {
        let out = run(Command::new("dump.erofs")
            .arg(format!("--path={path}"))
            .arg(&z));
        println!("{out}");
        let size: u64 = dump_field(&out, "Size:").parse().unwrap();
        let on_disk: u64 = dump_field(&out, "On-disk size:").parse().unwrap();
        assert_eq!(on_disk < size, compressed, "{path}:\n{out}");
    }
}

/// A compressed root that does not fit is refused once every file is compressed, naming the
/// exact size it needs (what a large enough partition then receives).
#[test]
fn compressed_too_small_names_size_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = sample_tree(tmp.path());
    let img = tmp.path().join("z.erofs");
    let fits = write_image_z(&tree, &img, LZ4HC);
    let plan = erofs::plan_compressed(&tree, &opts(), LZ4HC).unwrap();
    let small = tmp.path().join("small.erofs");
    let f = File::create(&small).unwrap();
    let e = erofs::write(&tree, &plan, &f, 0, fits.size - 4096).unwrap_err();
    match e {
        ErofsError::TooLarge { needed, available } => {
            assert_eq!((needed, available), (fits.size, fits.size - 4096));
        }
        other => panic!("{other}"),
    }
    assert!(e_text(fits.size).contains("MiB"));
    let f = File::create(&small).unwrap();
    erofs::write(&tree, &plan, &f, 0, fits.size).unwrap();
    assert!(fs::read(&small).unwrap() == fs::read(&img).unwrap());
}

fn e_text(needed: u64) -> String {
    ErofsError::TooLarge {
        needed,
        available: 0,
    }
    .to_string()
}
