//! Signed manifest, `rke2-image sign` and offline `rke2-image verify` (issue 12 part 3).
//!
//! A small image is built from a synthetic base (the same shape as hostile.rs's: boot modules
//! built in, a kernel configuration with every required option, a PE stub like systemd 252's),
//! signed through `signing.key` with a key openssl generates. `verify` must accept it and name
//! each tampering: a flipped byte in the root data, in the verity tree, in the UKI, in the
//! embedded manifest, a wrong key, two swapped partition entries (CRCs rewritten). Outside
//! oracles: `veritysetup verify` on the untouched root, `sgdisk -v` on the swapped table,
//! `openssl pkeyutl -verify` on the published signature, `sha256sum` on the image.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::{gpt, paths};
use rke2_testsupport::prereq;

mod common;
const STEM: &str = "signed-1.0";

fn base_tar() -> Vec<u8> {
    common::base_tar(vec![
        // Enough data for a two-level tree (and for the second hashing thread).
        (
            "opt/data.bin".into(),
            common::noise(0x9E37_79B9_7F4A_7C15, 4_600_000),
        ),
    ])
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup-host installs it)"))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rke2_image(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rke2-image"));
    c.args(args).env_remove("SOURCE_DATE_EPOCH");
    c
}

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    /// A workspace with the base, an init, keys (`key.pem`/`pub.pem`, `other.pem`/`other.pub`)
    /// and a definition with `extra` appended.
    fn new(extra: &str) -> Option<Ws> {
        if !prereq::program("openssl", "openssl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("base.tar"), base_tar()).unwrap();
        fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
        for (k, pubk) in [("key.pem", "pub.pem"), ("other.pem", "other.pub")] {
            ok(Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(p.join(k)));
            ok(Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(p.join(k))
                .arg("-out")
                .arg(p.join(pubk)));
        }
        fs::write(
            p.join("image.yaml"),
            format!(
                "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: signed\nversion: \"1.0\"\n\
                 base:\n  archive: base.tar\ninitrd:\n  init: init\nsecurity:\n  selinux: disabled\n\
                 disk:\n  espSize: 64MiB\n  rootSize: 24MiB\n  stateSize: 256MiB\n\
                 output:\n  directory: out\nepoch: 1700000000\n{extra}"
            ),
        )
        .unwrap();
        Some(Ws { dir })
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build(&self) -> Output {
        run(
            rke2_image(&["build".as_ref(), self.p("image.yaml").as_os_str()])
                .env("RKE2_IMAGE_CACHE", self.p("cache")),
        )
    }

    fn image(&self) -> PathBuf {
        self.p(&format!("out/{STEM}.raw"))
    }

    fn built(&self) -> PathBuf {
        let out = self.build();
        assert!(
            out.status.success(),
            "build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.image()
    }

    fn verify(&self, key: &str) -> (bool, String) {
        let out = run(&mut rke2_image(&[
            "verify".as_ref(),
            self.image().as_os_str(),
            "--key".as_ref(),
            self.p(key).as_os_str(),
        ]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn manifest(&self) -> Manifest {
        serde_json::from_slice(&fs::read(self.p(&format!("out/{STEM}.manifest.json"))).unwrap())
            .unwrap()
    }
}

/// Partition `label`'s byte range from the manifest.
fn region(m: &Manifest, label: &str) -> (u64, u64) {
    let p = m.disk.partitions.iter().find(|p| p.label == label).unwrap();
    (p.first_lba * 512, (p.last_lba + 1 - p.first_lba) * 512)
}

/// Where the ESP file `path`'s bytes lie in the image.
fn esp_extents(image: &Path, m: &Manifest, path: &str) -> Vec<(u64, u64)> {
    let f = fs::File::open(image).unwrap();
    let (off, len) = region(m, "esp");
    let loc = rke2_image::fat::read_located(&f, off, len).unwrap();
    loc.extents.get(path).unwrap().clone()
}

fn flip(image: &Path, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

/// Runs `verify` with byte `at` flipped, restores it, and returns the failing output.
fn refused_with_flip(ws: &Ws, at: u64) -> String {
    flip(&ws.image(), at);
    let (passed, text) = ws.verify("pub.pem");
    flip(&ws.image(), at);
    assert!(!passed, "verify accepted a flipped byte at {at}:\n{text}");
    eprintln!("refused as expected (byte {at}):\n{text}");
    text
}

fn has_finding(text: &str, needle: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("FAIL: ") && l.contains(needle))
}

#[test]
fn signed_image_verifies_and_each_tampering_is_named() {
    let Some(ws) = Ws::new("signing:\n  key: key.pem\n") else {
        return;
    };
    let image = ws.built();
    let m = ws.manifest();
    assert_eq!(m.ukis.len(), 1);
    assert_eq!(m.ukis[0].cmdline, m.boot.cmdline);
    assert!(m.esp_files.iter().any(|f| f.path == m.ukis[0].path));
    assert!(!m
        .esp_files
        .iter()
        .any(|f| f.path == paths::ESP_MANIFEST || f.path == paths::ESP_SIGNATURE));

    let (passed, text) = ws.verify("pub.pem");
    assert!(passed, "untouched image refused:\n{text}");
    assert!(text.contains("signature of"), "{text}");
    assert!(text.contains("dm-verity"), "{text}");

    // Outside oracles on the untouched image: sha256sum agrees with the published
    // manifest's outputs; openssl accepts the detached signature of the published manifest.
    let sum = ok(Command::new("sha256sum").arg(&image)).stdout;
    let sum = String::from_utf8_lossy(&sum);
    // The image, then the files published beside it (the SBOM).
    assert_eq!(m.outputs.len(), 2, "{:?}", m.outputs);
    assert_eq!(m.outputs[0].path, format!("{STEM}.raw"));
    assert_eq!(m.outputs[1].path, format!("{STEM}.spdx.json"));
    let sbom = ok(Command::new("sha256sum").arg(image.with_file_name(&m.outputs[1].path))).stdout;
    assert!(
        String::from_utf8_lossy(&sbom).starts_with(&m.outputs[1].sha256),
        "SBOM record {:?}",
        m.outputs[1]
    );
    assert!(
        sum.starts_with(&m.outputs[0].sha256),
        "{sum} vs {:?}",
        m.outputs
    );
    ok(Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(ws.p("pub.pem"))
        .arg("-in")
        .arg(ws.p(&format!("out/{STEM}.manifest.json")))
        .arg("-sigfile")
        .arg(ws.p(&format!("out/{STEM}.manifest.json.sig"))));
    if prereq::program("veritysetup", "cryptsetup-bin") {
        let img = fs::File::open(&image).unwrap();
        let (d, _) = region(&m, "root-a");
        let (h, hl) = region(&m, "root-a-verity");
        for (name, at, len) in [("root", d, m.verity.data_blocks * 4096), ("hash", h, hl)] {
            let mut buf = vec![0u8; len as usize];
            img.read_exact_at(&mut buf, at).unwrap();
            fs::write(ws.p(name), buf).unwrap();
        }
        ok(Command::new("veritysetup")
            .arg("verify")
            .arg(ws.p("root"))
            .arg(ws.p("hash"))
            .arg(&m.verity.root_hash));
    }

    // A flipped byte in the root data names root-a and the data block.
    let (d, _) = region(&m, "root-a");
    let at = d + 300 * 4096 + 17;
    let t = refused_with_flip(&ws, at);
    assert!(
        has_finding(
            &t,
            &format!("root-a at byte {}: data block 300 ", d + 300 * 4096)
        ),
        "{t}"
    );
    // In the verity tree: level 0 sits after the superblock block and the top level.
    let (h, _) = region(&m, "root-a-verity");
    let t = refused_with_flip(&ws, h + 2 * 4096 + 40);
    assert!(has_finding(&t, "root-a-verity at byte"), "{t}");
    // In the UKI (its last cluster: the kernel).
    let uki = esp_extents(&image, &m, &m.ukis[0].path);
    let (last, len) = *uki.last().unwrap();
    let t = refused_with_flip(&ws, last + len / 2);
    assert!(
        has_finding(
            &t,
            &format!("{} at byte {}: sha256", m.ukis[0].path, uki[0].0)
        ),
        "{t}"
    );
    // In the embedded manifest (a digit of the epoch: still valid JSON).
    let mext = esp_extents(&image, &m, paths::ESP_MANIFEST);
    let f = fs::File::open(&image).unwrap();
    let mut first = vec![0u8; mext[0].1 as usize];
    f.read_exact_at(&mut first, mext[0].0).unwrap();
    let pos = String::from_utf8_lossy(&first).find("1700000000").unwrap() as u64;
    let t = refused_with_flip(&ws, mext[0].0 + pos + 2);
    assert!(
        has_finding(
            &t,
            &format!("{}: the signature does not verify", paths::ESP_SIGNATURE)
        ),
        "{t}"
    );
    // Another key.
    let (passed, t) = ws.verify("other.pub");
    assert!(
        !passed && has_finding(&t, "the signature does not verify"),
        "{t}"
    );
    // The untouched image still verifies after all the restores.
    assert!(ws.verify("pub.pem").0);

    // Two swapped partition entries, CRCs rewritten: a valid GPT (sgdisk -v agrees), caught
    // only by the comparison with the signed manifest.
    swap_entries(&image, 4, 5);
    if prereq::program("sgdisk", "gdisk") {
        let out = ok(Command::new("sgdisk").arg("-v").arg(&image));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("No problems found"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (passed, t) = ws.verify("pub.pem");
    assert!(!passed, "{t}");
    assert!(
        has_finding(&t, "GPT entry 4 at byte 1408: label \"root-b-verity\""),
        "{t}"
    );
    assert!(has_finding(&t, "GPT entry 5"), "{t}");
    assert!(
        !has_finding(&t, "GPT primary") && !has_finding(&t, "GPT backup"),
        "{t}"
    );

    // --json: the same findings, machine-readable.
    let out = run(&mut rke2_image(&[
        "verify".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        ws.p("pub.pem").as_os_str(),
        "--json".as_ref(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"][0]["area"], "GPT entry 4");
    assert_eq!(v["findings"][0]["offset"], 1408);
}

/// Swaps entries `a` and `b` (1-based) in both entry arrays and rewrites both headers' CRCs.
fn swap_entries(image: &Path, a: usize, b: usize) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let size = f.metadata().unwrap().len();
    for header_lba in [1, size / 512 - 1] {
        let mut h = vec![0u8; 512];
        f.read_exact_at(&mut h, header_lba * 512).unwrap();
        let array_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
        let mut arr = vec![0u8; 128 * 128];
        f.read_exact_at(&mut arr, array_lba * 512).unwrap();
        let ea: Vec<u8> = arr[(a - 1) * 128..a * 128].to_vec();
        let eb: Vec<u8> = arr[(b - 1) * 128..b * 128].to_vec();
        arr[(a - 1) * 128..a * 128].copy_from_slice(&eb);
        arr[(b - 1) * 128..b * 128].copy_from_slice(&ea);
        h[88..92].copy_from_slice(&gpt::crc32(&arr).to_le_bytes());
        h[16..20].fill(0);
        let crc = gpt::crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&arr, array_lba * 512).unwrap();
        f.write_all_at(&h, header_lba * 512).unwrap();
    }
}

#[test]
fn sign_fills_in_an_unsigned_image() {
    let Some(ws) = Ws::new("") else {
        return;
    };
    let image = ws.built();
    assert!(!ws.p(&format!("out/{STEM}.manifest.json.sig")).exists());
    let (passed, t) = ws.verify("pub.pem");
    assert!(!passed && has_finding(&t, "the image is not signed"), "{t}");
    let before = ws.manifest();

    let out = ok(&mut rke2_image(&[
        "sign".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        ws.p("key.pem").as_os_str(),
    ]));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let (passed, t) = ws.verify("pub.pem");
    assert!(passed, "{t}");
    // Written in place through the FAT: the ESP is still a clean volume for fsck.fat.
    if prereq::program("fsck.fat", "dosfstools") {
        let (off, len) = region(&before, "esp");
        let mut buf = vec![0u8; len as usize];
        fs::File::open(&image)
            .unwrap()
            .read_exact_at(&mut buf, off)
            .unwrap();
        fs::write(ws.p("esp.img"), buf).unwrap();
        ok(Command::new("fsck.fat").arg("-n").arg(ws.p("esp.img")));
    }
    // The published manifest now carries the signed image's hash, and its own signature.
    let after = ws.manifest();
    assert_ne!(before.outputs[0].sha256, after.outputs[0].sha256);
    let sum = ok(Command::new("sha256sum").arg(&image)).stdout;
    assert!(String::from_utf8_lossy(&sum).starts_with(&after.outputs[0].sha256));
    ok(Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(ws.p("pub.pem"))
        .arg("-in")
        .arg(ws.p(&format!("out/{STEM}.manifest.json")))
        .arg("-sigfile")
        .arg(ws.p(&format!("out/{STEM}.manifest.json.sig"))));

    // An image that no longer matches its manifest is not signed.
    let (d, _) = region(&after, "root-a");
    flip(&image, d + 5);
    let out = run(&mut rke2_image(&[
        "sign".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        ws.p("other.pem").as_os_str(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to sign") && err.contains("root-a at byte"),
        "{err}"
    );
}

#[test]
fn bad_signing_key_is_refused_before_any_output() {
    let Some(ws) = Ws::new("signing:\n  key: rsa.pem\n") else {
        return;
    };
    ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "rsa",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(ws.p("rsa.pem")));
    for key in ["rsa.pem", "missing.pem", "pub.pem"] {
        let text = fs::read_to_string(ws.p("image.yaml")).unwrap();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("  key: ") {
                    format!("  key: {key}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(ws.p("image.yaml"), text + "\n").unwrap();
        let out = ws.build();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
        assert!(
            line.contains("image.yaml") && line.contains("signing.key"),
            "{line}"
        );
        assert!(line.contains(key), "{line}");
        assert!(
            line.contains("openssl genpkey -algorithm ed25519") || line.contains("cannot read"),
            "{line}"
        );
        let left: Vec<_> = fs::read_dir(ws.p("out"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{key}: left {left:?}");
    }
}
