//! FAT32 volumes written by `rke2_image::fat`, checked with fsck.fat (dosfstools) and mtools;
//! volumes made by mkfs.fat + mcopy read back with `fat::read_all`.

// Tests may unwrap (the workspace lint also covers test helpers).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use rke2_image::fat::{self, FatError, Options};
use rke2_image::tree::Blob;

const MIB: u64 = 1024 * 1024;
/// 2024-02-29 13:45:30 UTC.
const EPOCH: u64 = 1_709_214_330;

fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Deterministic pseudo-random bytes (xorshift), so content mix-ups cannot go unnoticed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    rke2_testsupport::noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, len)
}

fn opts() -> Options {
    Options {
        label: "RKE2-ESP".into(),
        volume_id: 0x1234_ABCD,
        mtime: EPOCH,
    }
}

/// What an ESP holds, plus the awkward cases: deep paths (directories holding only
/// directories), 400 files in one directory, empty and multi-cluster files, a 10 MB file,
/// lower-case, dotted, over-long and non-ASCII names, names whose short forms collide.
fn esp_content() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), noise(1, 123_457)),
        ("EFI/systemd/systemd-bootx64.efi".into(), noise(2, 98_765)),
        (
            "loader/loader.conf".into(),
            b"timeout 3\ndefault rke2-a.conf\n".to_vec(),
        ),
        (
            "loader/entries/rke2-a.conf".into(),
            b"title A\nefi /EFI/Linux/a.efi\n".to_vec(),
        ),
        (
            "loader/entries/rke2-b.conf".into(),
            b"title B\nefi /EFI/Linux/b.efi\n".to_vec(),
        ),
        ("EFI/Linux/rke2-a.efi".into(), noise(3, 10_000_000)),
        ("EFI/Linux/rke2-b.efi".into(), noise(4, 513)),
        ("loader/random-seed".into(), Vec::new()),
        ("a/b/c/d/e/deep.txt".into(), b"deep".to_vec()),
        ("a/b/.hidden".into(), b"dot".to_vec()),
        ("a/b/Mixed Case Name.Text".into(), b"mixed".to_vec()),
        (
            "a/b/unicode-\u{e9}t\u{e9}-\u{4e2d}.txt".into(),
            b"utf".to_vec(),
        ),
        ("a/b/README".into(), b"exact 8.3".to_vec()),
        ("a/b/readme.txt".into(), b"lower 8.3".to_vec()),
        (format!("a/b/{}", "x".repeat(200)), b"long".to_vec()),
        // Exactly 13 and 26 UTF-16 units: long-name entries without padding.
        ("a/b/abcdefghijklm".into(), b"13".to_vec()),
        ("a/b/abcdefghijklmnopqrstuvwxyz".into(), b"26".to_vec()),
    ];
    for i in 0..400 {
        v.push((
            format!("many/file-number-{i:04}.conf"),
            noise(100 + i, (i as usize * 37) % 1500),
        ));
    }
    v
}

fn blobs(content: &[(String, Vec<u8>)]) -> Vec<(String, Blob)> {
    content
        .iter()
        .map(|(p, d)| (p.clone(), Blob::bytes(d.clone())))
        .collect()
}

fn image(path: &Path, size: u64) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    f
}

/// fsck.fat in read-only mode, verbose, with a verification pass: exit status 0 and no
/// complaint in its output. Returns (files, used clusters, total clusters) from its summary.
fn fsck_clean(path: &Path) -> (u64, u64, u64) {
    let p = path.to_str().unwrap();
    let (code, text) = run("fsck.fat", &["-n", "-v", "-V", p]);
    assert_eq!(code, 0, "fsck.fat -n -v -V {p}:\n{text}");
    for bad in [
        "arning",
        "differ",
        "ad ",
        "nvalid",
        "rong",
        "Perform changes",
        "Dirty",
        "Reclaim",
        "Free cluster",
        "Orphan",
        "chain",
        "ontains",
        "Deleting",
        "Truncating",
        "lost",
    ] {
        assert!(!text.contains(bad), "fsck.fat reports {bad:?}:\n{text}");
    }
    let summary = text
        .lines()
        .find(|l| l.contains(" files, ") && l.contains(" clusters"))
        .unwrap_or_else(|| panic!("no summary in:\n{text}"));
    let nums: Vec<u64> = summary
        .rsplit(':')
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2])
}

fn as_map(content: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
    content.iter().cloned().collect()
}

fn dirs_of(content: &[(String, Vec<u8>)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (p, _) in content {
        let mut acc = String::new();
        for c in p.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            out.insert(acc.clone());
        }
    }
    out
}

#[test]
fn fsck_clean_for_several_sizes_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let content = esp_content();
    let files = blobs(&content);
    let ndirs = dirs_of(&content).len() as u64;
    for (size, cluster) in [
        (64 * MIB, 512),
        (200 * MIB, 512),
        (260 * MIB, 512),
        (261 * MIB, 4096),
        (512 * MIB, 4096),
        (2048 * MIB, 4096),
    ] {
        let path = dir.path().join(format!("esp-{size}.img"));
        let f = image(&path, size);
        let stats = fat::write(&files, &f, 0, size, &opts()).unwrap();
        assert_eq!(stats.cluster_size, cluster, "size {size}");
        assert_eq!(stats.files, content.len());
        assert_eq!(stats.dirs as u64, ndirs);
        let (nfiles, used, total) = fsck_clean(&path);
        // fsck.fat counts files, directories and the volume label entry.
        assert_eq!(nfiles, content.len() as u64 + ndirs + 1, "size {size}");
        assert_eq!(used, stats.used_clusters, "size {size}");
        assert_eq!(total, stats.clusters, "size {size}");
        assert_eq!(stats.used_clusters + stats.free_clusters, stats.clusters);
        assert_eq!(fat::read_all(&f, 0, size).unwrap(), as_map(&content));
    }
}

#[test]
fn cluster_size_and_layout_match_mkfs_fat() {
    // mkfs.fat on a same-sized volume picks the same cluster size and reserved sectors.
    let dir = tempfile::tempdir().unwrap();
    for size in [64 * MIB, 300 * MIB] {
        let ours = dir.path().join("ours.img");
        let theirs = dir.path().join("theirs.img");
        let f = image(&ours, size);
        let stats = fat::write(&[], &f, 0, size, &opts()).unwrap();
        image(&theirs, size);
        let (code, text) = run("mkfs.fat", &["-F", "32", theirs.to_str().unwrap()]);
        assert_eq!(code, 0, "{text}");
        let (_, v) = run("fsck.fat", &["-n", "-v", theirs.to_str().unwrap()]);
        assert!(
            v.contains(&format!("{} bytes per cluster", stats.cluster_size)),
            "{v}"
        );
        let (_, o) = run("fsck.fat", &["-n", "-v", ours.to_str().unwrap()]);
        assert!(o.contains("32 reserved sectors") || size > 260 * MIB, "{o}");
        fsck_clean(&ours);
    }
}

#[test]
fn mtools_reads_names_and_bytes_at_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let content = esp_content();
    let files = blobs(&content);
    let (offset, size) = (MIB, 100 * MIB);
    let path = dir.path().join("disk.img");
    let f = image(&path, offset + size + MIB);
    // Something after the volume that must survive.
    f.write_all_at(b"TAIL", offset + size).unwrap();
    fat::write(&files, &f, offset, size, &opts()).unwrap();
    let mut tail = [0u8; 4];
    f.read_exact_at(&mut tail, offset + size).unwrap();
    assert_eq!(&tail, b"TAIL");
    let spec = format!("{}@@{offset}", path.display());

    // Recursive bare listing: every file and directory, by long name.
    let (code, list) = run("mdir", &["-/", "-b", "-i", &spec, "::"]);
    assert_eq!(code, 0, "{list}");
    let listed: BTreeSet<String> = list
        .lines()
        .map(|l| {
            l.trim_start_matches("::/")
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    let mut want: BTreeSet<String> = content.iter().map(|(p, _)| p.clone()).collect();
    want.extend(dirs_of(&content));
    assert_eq!(listed, want);

    // Copy everything out with mcopy and compare bytes.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (code, text) = run(
        "mcopy",
        &["-s", "-n", "-i", &spec, "::*", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    for (p, data) in &content {
        let got = std::fs::read(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *data, "{p}: contents differ");
    }

    // Short names, long names, sizes and the fixed timestamp as mtools shows them.
    let (_, d) = run("mdir", &["-i", &spec, "::/EFI/systemd"]);
    assert!(d.contains("SYSTEM~1 EFI"), "{d}");
    assert!(d.contains("systemd-bootx64.efi"), "{d}");
    assert!(d.contains("98765 2024-02-29  13:45"), "{d}");
    let (_, d) = run("mdir", &["-i", &spec, "::/EFI/BOOT"]);
    assert!(d.contains("BOOTX64  EFI"), "{d}");
    assert!(
        !d.contains("bootx64"),
        "an exact 8.3 name needs no long name:\n{d}"
    );
    let (_, d) = run("mdir", &["-i", &spec, "::/"]);
    assert!(d.contains("Volume in drive : is RKE2-ESP"), "{d}");
    assert!(d.contains("Serial Number is 1234-ABCD"), "{d}");
    let (_, d) = run("mdir", &["-i", &spec, "::/a/b"]);
    for s in [
        "README",
        "README   TXT",
        "HIDDEN~1",
        "MIXEDC~1 TEX",
        "XXXXXX~1",
    ] {
        assert!(d.contains(s), "missing short name {s}:\n{d}");
    }

    // fsck.fat on the volume cut out of the disk image.
    let cut = dir.path().join("cut.img");
    let mut vol = vec![0u8; size as usize];
    f.read_exact_at(&mut vol, offset).unwrap();
    std::fs::write(&cut, &vol).unwrap();
    fsck_clean(&cut);
    assert_eq!(fat::read_all(&f, offset, size).unwrap(), as_map(&content));
}

/// Raw directory entries of the cluster chain starting at `cluster` (first cluster only).
fn dir_entries(img: &[u8], cluster: u64) -> Vec<[u8; 32]> {
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([img[o], img[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes(img[o..o + 4].try_into().unwrap()));
    let spc = u64::from(img[13]);
    let data = (u16_at(14) + u64::from(img[16]) * u32_at(36)) * 512;
    let at = (data + (cluster - 2) * spc * 512) as usize;
    img[at..at + spc as usize * 512]
        .chunks_exact(32)
        .take_while(|e| e[0] != 0)
        .map(|e| e.try_into().unwrap())
        .collect()
}

fn cluster_of(e: &[u8; 32]) -> u64 {
    u64::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u64::from(u16::from_le_bytes([e[26], e[27]]))
}

#[test]
fn dot_entries_timestamps_fsinfo_and_backup_boot_sector() {
    let dir = tempfile::tempdir().unwrap();
    let content = esp_content();
    let size = 64 * MIB;
    let path = dir.path().join("raw.img");
    let f = image(&path, size);
    let stats = fat::write(&blobs(&content), &f, 0, size, &opts()).unwrap();
    let img = std::fs::read(&path).unwrap();

    let root = dir_entries(&img, 2);
    assert_eq!(&root[0][..11], b"RKE2-ESP   ");
    assert_eq!(root[0][11], 0x08);
    let efi = root.iter().find(|e| &e[..11] == b"EFI        ").unwrap();
    let efi_c = cluster_of(efi);
    let efi_entries = dir_entries(&img, efi_c);
    assert_eq!(&efi_entries[0][..11], b".          ");
    assert_eq!(cluster_of(&efi_entries[0]), efi_c);
    assert_eq!(&efi_entries[1][..11], b"..         ");
    assert_eq!(
        cluster_of(&efi_entries[1]),
        0,
        "'..' of a first-level directory is 0"
    );
    let boot = efi_entries
        .iter()
        .find(|e| &e[..11] == b"BOOT       ")
        .unwrap();
    let boot_entries = dir_entries(&img, cluster_of(boot));
    assert_eq!(cluster_of(&boot_entries[1]), efi_c, "'..' names the parent");

    // Every timestamp is the epoch (2024-02-29 13:45:30 = 13:45:30, 2-second units).
    let date = ((2024u16 - 1980) << 9) | (2 << 5) | 29;
    let time = (13u16 << 11) | (45 << 5) | 15;
    for e in root.iter().chain(&efi_entries).chain(&boot_entries) {
        if e[11] == 0x0F {
            continue;
        }
        assert_eq!(u16::from_le_bytes([e[22], e[23]]), time);
        assert_eq!(u16::from_le_bytes([e[24], e[25]]), date);
        assert_eq!(u16::from_le_bytes([e[16], e[17]]), date);
        assert_eq!(u16::from_le_bytes([e[18], e[19]]), date);
    }

    // FSInfo: free count and next free cluster; backup boot sector equals the primary.
    let fsinfo = &img[512..1024];
    assert_eq!(&fsinfo[0..4], b"RRaA");
    assert_eq!(
        u64::from(u32::from_le_bytes(fsinfo[488..492].try_into().unwrap())),
        stats.free_clusters
    );
    assert_eq!(
        u64::from(u32::from_le_bytes(fsinfo[492..496].try_into().unwrap())),
        stats.used_clusters + 2
    );
    assert_eq!(img[..512], img[6 * 512..7 * 512]);
    assert_eq!(img[512..1024], img[7 * 512..8 * 512]);
    // Two identical FATs.
    let fat_len = stats.fat_sectors as usize * 512;
    assert_eq!(
        img[32 * 512..32 * 512 + fat_len],
        img[32 * 512 + fat_len..32 * 512 + 2 * fat_len]
    );
}

#[test]
fn output_is_deterministic_and_independent_of_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let content = esp_content();
    let mut reversed = blobs(&content);
    reversed.reverse();
    let size = 80 * MIB;
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    fat::write(&blobs(&content), &image(&a, size), 0, size, &opts()).unwrap();
    fat::write(&reversed, &image(&b, size), 0, size, &opts()).unwrap();
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap());
}

#[test]
fn read_all_reads_a_volume_made_by_mkfs_fat_and_mcopy() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let content: Vec<(String, Vec<u8>)> = vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), noise(7, 70_001)),
        ("EFI/systemd/systemd-bootx64.efi".into(), noise(8, 4097)),
        ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
        ("loader/entries/a.conf".into(), b"title a\n".to_vec()),
        ("lower".into(), b"lower-case 8.3 name".to_vec()),
        ("UPPER.TXT".into(), b"upper".to_vec()),
        ("empty".into(), Vec::new()),
        (
            "big/ten-megabytes.bin".into(),
            noise(9, 10 * 1024 * 1024 + 3),
        ),
        (format!("long/{}", "n".repeat(120)), b"long".to_vec()),
    ];
    for (p, d) in &content {
        let full = src.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, d).unwrap();
    }
    let offset = 2048 * 512;
    let size = 100 * MIB;
    let path = dir.path().join("mk.img");
    let f = image(&path, offset + size);
    let p = path.to_str().unwrap();
    let (code, text) = run(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "ORACLE",
            "--offset=2048",
            p,
            &(size / 1024).to_string(),
        ],
    );
    assert_eq!(code, 0, "{text}");
    let spec = format!("{p}@@{offset}");
    for top in [
        "EFI",
        "loader",
        "lower",
        "UPPER.TXT",
        "empty",
        "big",
        "long",
    ] {
        let (code, text) = run(
            "mcopy",
            &["-s", "-i", &spec, src.join(top).to_str().unwrap(), "::/"],
        );
        assert_eq!(code, 0, "{text}");
    }
    assert_eq!(fat::read_all(&f, offset, size).unwrap(), as_map(&content));
}

#[test]
fn min_size_is_the_smallest_volume_that_works() {
    let dir = tempfile::tempdir().unwrap();
    for content in [
        vec![("EFI/BOOT/BOOTX64.EFI".to_string(), noise(1, 1000))],
        vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), noise(1, 1000)),
            ("EFI/Linux/big.efi".to_string(), noise(2, 60 * 1024 * 1024)),
        ],
        // Needs more than 260 MiB, so 4 KiB clusters.
        vec![("huge.bin".to_string(), noise(3, 270 * 1024 * 1024))],
    ] {
        let files = blobs(&content);
        let min = fat::min_size(&files);
        assert_eq!(min % 512, 0);
        let path = dir.path().join("min.img");
        let f = image(&path, min);
        fat::write(&files, &f, 0, min, &opts()).unwrap();
        fsck_clean(&path);
        assert_eq!(fat::read_all(&f, 0, min).unwrap(), as_map(&content));
        let smaller = min - 512;
        let f = image(&path, smaller);
        match fat::write(&files, &f, 0, smaller, &opts()) {
            Err(FatError::TooSmall { .. }) => {}
            Err(FatError::DoesNotFit { needed, available }) => {
                assert_eq!((needed, available), (min, smaller))
            }
            other => panic!("{smaller} bytes should not work (min {min}): {other:?}"),
        }
    }
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("err.img");
    let size = 64 * MIB;
    let f = image(&path, size);
    let one = |p: &str| vec![(p.to_string(), Blob::bytes(b"x".to_vec()))];

    let big = vec![(
        "big.bin".to_string(),
        Blob::bytes(vec![0u8; 70 * MIB as usize]),
    )];
    match fat::write(&big, &f, 0, size, &opts()) {
        Err(FatError::DoesNotFit { needed, available }) => {
            assert_eq!(available, size);
            assert_eq!(needed, fat::min_size(&big));
            assert!(needed > 70 * MIB);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        "a/../b",
        "a/./b",
        "a:b",
        "a/b?",
        "trailing.",
        "x/",
        "a\u{1}b",
    ] {
        match fat::write(&one(bad), &f, 0, size, &opts()) {
            Err(e @ FatError::BadName { .. }) => {
                assert!(e.to_string().contains(&format!("{bad:?}")), "{e}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let mut case = one("EFI/a.conf");
    case.extend(one("EFI/A.CONF"));
    assert!(matches!(
        fat::write(&case, &f, 0, size, &opts()),
        Err(FatError::BadName { .. })
    ));
    let mut conflict = one("EFI/x");
    conflict.extend(one("EFI/x/y"));
    assert!(matches!(
        fat::write(&conflict, &f, 0, size, &opts()),
        Err(FatError::BadName { .. })
    ));
    let mut twice = one("EFI/x");
    twice.extend(one("EFI/x"));
    assert!(matches!(
        fat::write(&twice, &f, 0, size, &opts()),
        Err(FatError::BadName { .. })
    ));
    for label in ["lower", "TWELVE CHARS", "A.B"] {
        let o = Options {
            label: label.into(),
            ..opts()
        };
        assert!(matches!(
            fat::write(&one("f"), &f, 0, size, &o),
            Err(FatError::BadLabel(_))
        ));
    }
    assert!(matches!(
        fat::write(&one("f"), &f, 0, 20 * MIB, &opts()),
        Err(FatError::TooSmall { .. })
    ));
    assert!(matches!(
        fat::write(&one("f"), &f, 100, size, &opts()),
        Err(FatError::Unaligned { .. })
    ));
    // A region that holds no FAT at all.
    assert!(matches!(
        fat::read_all(&image(&dir.path().join("zero.img"), size), 0, size),
        Err(FatError::Corrupt(_))
    ));
}

#[test]
fn streams_host_file_blobs_and_detects_changed_length() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("kernel.efi");
    let data = noise(5, 3 * 1024 * 1024 + 5);
    std::fs::write(&host, &data).unwrap();
    let size = 64 * MIB;
    let path = dir.path().join("host.img");
    let f = image(&path, size);
    let files = vec![(
        "EFI/Linux/kernel.efi".to_string(),
        Blob::HostFile {
            path: host.clone(),
            len: data.len() as u64,
        },
    )];
    fat::write(&files, &f, 0, size, &opts()).unwrap();
    fsck_clean(&path);
    assert_eq!(
        fat::read_all(&f, 0, size).unwrap()["EFI/Linux/kernel.efi"],
        data
    );
    let wrong = vec![(
        "EFI/Linux/kernel.efi".to_string(),
        Blob::HostFile {
            path: host,
            len: data.len() as u64 + 1,
        },
    )];
    let err = fat::write(&wrong, &f, 0, size, &opts()).unwrap_err();
    assert!(err.to_string().contains("kernel.efi"), "{err}");
}

#[test]
fn volume_without_label() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let path = dir.path().join("nolabel.img");
    let f = image(&path, size);
    let o = Options {
        label: String::new(),
        ..opts()
    };
    let content = vec![("EFI/BOOT/BOOTX64.EFI".to_string(), noise(11, 4000))];
    fat::write(&blobs(&content), &f, 0, size, &o).unwrap();
    let (files, _, _) = fsck_clean(&path);
    // Two directories and one file, no label entry.
    assert_eq!(files, 3);
    let img = std::fs::read(&path).unwrap();
    assert_eq!(&img[71..82], b"NO NAME    ");
    assert_eq!(&dir_entries(&img, 2)[0][..11], b"EFI        ");
    let (_, d) = run("mdir", &["-i", path.to_str().unwrap(), "::/"]);
    assert!(d.contains("has no label"), "{d}");
    assert_eq!(fat::read_all(&f, 0, size).unwrap(), as_map(&content));
}
