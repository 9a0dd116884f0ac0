//! Checks `contract::verity` against `veritysetup` (cryptsetup-bin): byte-identical hash
//! devices and root hashes, `veritysetup verify` accepting our tree and catching a flipped byte,
//! `veritysetup dump` reading our superblock.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers outside #[test] included)

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;

use rke2_image_contract::verity::{self, Params, Superblock};

const UUID_STR: &str = "01234567-89ab-cdef-0123-456789abcdef";
const UUID: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];

/// Deterministic non-repeating filler (xorshift), so every block hashes differently.
fn fill(path: &Path, len: u64, seed: u64) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len as usize);
    while (buf.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len as usize);
    fs::write(path, buf).unwrap();
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new("veritysetup")
        .args(args)
        .output()
        .expect("veritysetup (cryptsetup-bin) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in veritysetup output:\n{text}"))
        .trim()
}

fn check(blocks: u64, salt: &[u8], hash_block_size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    fill(&data, blocks * 4096, blocks * 7 + 3);
    let salt_hex = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };

    let params = Params {
        hash_block_size,
        ..Params::new(blocks, salt.to_vec(), UUID)
    };
    let d = File::open(&data).unwrap();
    let h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&ours)
        .unwrap();
    let root = verity::format(&d, 0, &h, 0, &params).unwrap();
    drop(h);

    let hbs = hash_block_size.to_string();
    let (ok, text) = run(&[
        "format",
        &format!("--salt={salt_hex}"),
        &format!("--uuid={UUID_STR}"),
        "--data-block-size",
        "4096",
        "--hash-block-size",
        &hbs,
        data.to_str().unwrap(),
        theirs.to_str().unwrap(),
    ]);
    assert!(ok, "veritysetup format failed: {text}");
    assert_eq!(
        field(&text, "Root hash:"),
        hex::encode(root),
        "root hash, {blocks} blocks"
    );

    let ours_bytes = fs::read(&ours).unwrap();
    let theirs_bytes = fs::read(&theirs).unwrap();
    assert_eq!(
        ours_bytes.len() as u64,
        verity::hash_device_size(blocks, hash_block_size)
    );
    assert_eq!(ours_bytes.len(), theirs_bytes.len(), "{blocks} blocks");
    assert!(
        ours_bytes == theirs_bytes,
        "hash devices differ for {blocks} blocks at byte {:?}",
        ours_bytes
            .iter()
            .zip(&theirs_bytes)
            .position(|(a, b)| a != b)
    );

    let (ok, dump) = run(&["dump", ours.to_str().unwrap()]);
    assert!(ok, "{dump}");
    assert_eq!(field(&dump, "UUID:"), UUID_STR);
    assert_eq!(field(&dump, "Hash type:"), "1");
    assert_eq!(field(&dump, "Data blocks:"), blocks.to_string());
    assert_eq!(field(&dump, "Data block size:"), "4096");
    assert_eq!(field(&dump, "Hash block size:"), hbs);
    assert_eq!(field(&dump, "Hash algorithm:"), "sha256");
    assert_eq!(field(&dump, "Salt:"), salt_hex);
    assert_eq!(Superblock::parse(&ours_bytes).unwrap(), params);

    let root_hex = hex::encode(root);
    let (ok, text) = run(&[
        "verify",
        data.to_str().unwrap(),
        ours.to_str().unwrap(),
        &root_hex,
    ]);
    assert!(ok, "veritysetup verify rejected our tree: {text}");

    // Flip one byte in the last data block: verification must fail.
    let mut bytes = fs::read(&data).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    fs::write(&data, &bytes).unwrap();
    let (ok, text) = run(&[
        "verify",
        data.to_str().unwrap(),
        ours.to_str().unwrap(),
        &root_hex,
    ]);
    assert!(!ok, "veritysetup verify accepted corrupted data: {text}");
}

#[test]
fn one_block() {
    check(1, b"\x01\x02\x03", 4096);
}

#[test]
fn around_one_hash_block() {
    for blocks in [127, 128, 129] {
        check(blocks, &[0x5a; 32], 4096);
    }
}

#[test]
fn few_mib_no_salt() {
    check(1000, b"", 4096);
}

#[test]
fn max_salt() {
    let salt: Vec<u8> = (0..=255u8).collect();
    check(300, &salt, 4096);
}

#[test]
fn three_levels_4k() {
    // 128 * 128 + 1 data blocks (64 MiB) need three tree levels with 4 KiB hash blocks.
    check(128 * 128 + 1, &[0xee; 16], 4096);
}

#[test]
fn four_levels_small_hash_blocks() {
    // 16 digests per 512-byte hash block: 16^3 + 1 blocks need four levels.
    check(16 * 16 * 16 + 1, &[0x11; 8], 512);
}

#[test]
fn data_and_hash_in_one_file() {
    // Data then (after a gap) the hash tree in one file, as `veritysetup format --hash-offset`
    // lays it out.
    let blocks = 300u64;
    let hash_off = blocks * 4096 + 8192;
    let salt = [9u8; 20];
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    fill(&ours, hash_off, 42);
    fs::copy(&ours, &theirs).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ours)
        .unwrap();
    let params = Params::new(blocks, salt.to_vec(), UUID);
    let root = verity::format(&f, 0, &f, hash_off, &params).unwrap();
    drop(f);

    let t = theirs.to_str().unwrap();
    let (ok, text) = run(&[
        "format",
        &format!("--salt={}", hex::encode(salt)),
        &format!("--uuid={UUID_STR}"),
        &format!("--data-blocks={blocks}"),
        &format!("--hash-offset={hash_off}"),
        "--data-block-size",
        "4096",
        "--hash-block-size",
        "4096",
        t,
        t,
    ]);
    assert!(ok, "{text}");
    assert_eq!(field(&text, "Root hash:"), hex::encode(root));
    assert!(fs::read(&ours).unwrap() == fs::read(&theirs).unwrap());

    // The same data placed at a non-zero data offset gives the same tree and root.
    let shifted = dir.path().join("shifted");
    let mut v = vec![0xffu8; 4096];
    v.extend_from_slice(&fs::read(&ours).unwrap()[..(blocks * 4096) as usize]);
    fs::write(&shifted, &v).unwrap();
    let hash2 = dir.path().join("hash2");
    let g = File::open(&shifted).unwrap();
    let h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&hash2)
        .unwrap();
    assert_eq!(verity::format(&g, 4096, &h, 0, &params).unwrap(), root);
    assert!(fs::read(&hash2).unwrap()[..] == fs::read(&ours).unwrap()[hash_off as usize..]);
}
