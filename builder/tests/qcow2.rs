//! Output selection and the qcow2 output (issue 11 §1, §2).
//!
//! A small signed image is built from the synthetic base (tests/common) with
//! `--format raw,qcow2`, and again with `--format qcow2` alone into another directory. Outside
//! oracles: `qemu-img check` (clean), `qemu-img compare` (the qcow2 carries the raw disk's
//! bytes), `cmp` (two builds give the same qcow2), `sha256sum` (the published manifest's
//! `outputs` records). `verify` and `inspect` read the qcow2; a qcow2 of a tampered disk and a
//! qcow2 with a broken header are refused. Unknown and not-yet-built formats fail before
//! anything carries a final name.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use rke2_image_contract::manifest::Manifest;
use rke2_testsupport::prereq;

mod common;
use common::text;
const STEM: &str = "fmt-1.0";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup-host installs it)"))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

/// A workspace under the target directory (not /tmp) with the base, an init, a signing key
/// and a definition with `extra` appended; `None` when an oracle is missing (a failure under
/// `RKE2_TEST_STRICT`).
fn workspace(extra: &str) -> Option<tempfile::TempDir> {
    if !prereq::program("qemu-img", "qemu-utils") || !prereq::program("openssl", "openssl") {
        return None;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let p = dir.path();
    fs::write(p.join("base.tar"), common::base_tar(Vec::new())).unwrap();
    fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(p.join("key.pem")));
    ok(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(p.join("key.pem"))
        .arg("-out")
        .arg(p.join("pub.pem")));
    fs::write(
        p.join("image.yaml"),
        format!(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: fmt\nversion: \"1.0\"\n\
             base:\n  archive: base.tar\ninitrd:\n  init: init\nsecurity:\n  selinux: disabled\n\
             disk:\n  espSize: 64MiB\n  rootSize: 24MiB\n  stateSize: 256MiB\n\
             signing:\n  key: key.pem\nepoch: 1700000000\n{extra}"
        ),
    )
    .unwrap();
    Some(dir)
}

fn rke2_image(ws: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(args)
        .current_dir(ws)
        .env("RKE2_IMAGE_CACHE", ws.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH"))
}

/// Names in `dir` (all of them, hidden ones too), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(r) => r
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&fs::read(dir.join(format!("{STEM}.manifest.json"))).unwrap()).unwrap()
}

/// Each `outputs` record against `sha256sum` and the file's size; returns the recorded names.
fn check_records(dir: &Path) -> Vec<String> {
    let m = manifest(dir);
    for r in &m.outputs {
        let f = dir.join(&r.path);
        let out = ok(Command::new("sha256sum").arg(&f));
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            sum.split_whitespace().next(),
            Some(r.sha256.as_str()),
            "{}",
            r.path
        );
        assert_eq!(fs::metadata(&f).unwrap().len(), r.size, "{}", r.path);
    }
    let mut v: Vec<String> = m.outputs.iter().map(|r| r.path.clone()).collect();
    v.sort();
    v
}

fn verify(ws: &Path, image: &Path) -> (bool, String) {
    let out = rke2_image(
        ws,
        &[
            "verify",
            image.to_str().unwrap(),
            "--key",
            ws.join("pub.pem").to_str().unwrap(),
        ],
    );
    (out.status.success(), text(&out))
}

/// Same conversion options as the builder, for the tampered copy.
fn to_qcow2(raw: &Path, qcow2: &Path) {
    ok(Command::new("qemu-img")
        .args([
            "convert", "-q", "-c", "-m", "1", "-f", "raw", "-O", "qcow2", "-o",
        ])
        .arg(rke2_image::outputs::qcow2::OPTIONS)
        .arg(raw)
        .arg(qcow2));
}

#[test]
fn qcow2_output_matches_the_raw_and_verifies() {
    let Some(ws) = workspace("") else { return };
    let p = ws.path();
    let out = ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args([
            "build",
            "image.yaml",
            "--format",
            "raw,qcow2",
            "--output",
            "a",
        ])
        .current_dir(p)
        .env("RKE2_IMAGE_CACHE", p.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH"));
    let a = p.join("a");
    let raw = a.join(format!("{STEM}.raw"));
    let qcow2 = a.join(format!("{STEM}.qcow2"));
    // stdout: one published output per line (as `--output` named the directory).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec![format!("a/{STEM}.raw"), format!("a/{STEM}.qcow2")]
    );
    // Only final names and the lock; no temporaries.
    assert_eq!(
        names(&a),
        vec![
            format!(".{STEM}.lock"),
            format!("{STEM}.manifest.json"),
            format!("{STEM}.manifest.json.sig"),
            format!("{STEM}.qcow2"),
            format!("{STEM}.raw"),
            format!("{STEM}.spdx.json"),
        ]
    );
    let check = ok(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&qcow2));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
        "{}",
        text(&check)
    );
    let info = ok(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["cluster-size"], 65536);
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zlib");
    assert_eq!(info["virtual-size"], fs::metadata(&raw).unwrap().len());
    ok(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    assert_eq!(
        check_records(&a),
        vec![
            format!("{STEM}.qcow2"),
            format!("{STEM}.raw"),
            format!("{STEM}.spdx.json")
        ]
    );

    // verify and inspect read the qcow2 as the disk it carries, and leave no temporary.
    let (passed, t) = verify(p, &qcow2);
    assert!(passed, "{t}");
    assert!(t.contains("dm-verity"), "{t}");
    let ins = ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(["inspect", "--json"])
        .arg(&qcow2));
    let ins: serde_json::Value = serde_json::from_slice(&ins.stdout).unwrap();
    let m = manifest(&a);
    assert_eq!(ins["rootHash"], m.verity.root_hash.as_str(), "{ins}");
    assert_eq!(names(&a).len(), 6, "{:?}", names(&a));

    // A second build asking for qcow2 only: the same qcow2 bytes, no raw published, and the
    // manifest lists only what was published.
    let out = rke2_image(
        p,
        &["build", "image.yaml", "--format", "qcow2", "--output", "b"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let b = p.join("b");
    let qcow2_b = b.join(format!("{STEM}.qcow2"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("b/{STEM}.qcow2")
    );
    ok(Command::new("cmp").arg(&qcow2).arg(&qcow2_b));
    assert!(!b.join(format!("{STEM}.raw")).exists());
    assert_eq!(
        check_records(&b),
        vec![format!("{STEM}.qcow2"), format!("{STEM}.spdx.json")]
    );
    assert_eq!(names(&b).len(), 5, "{:?}", names(&b));

    // A qcow2 of a disk with one root data byte changed: verify names the root partition.
    let root = m
        .disk
        .partitions
        .iter()
        .find(|x| x.label == "root-a")
        .unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)
        .unwrap();
    let at = root.first_lba * 512 + 4096;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    drop(f);
    let tampered = p.join("tampered.qcow2");
    to_qcow2(&raw, &tampered);
    let (passed, t) = verify(p, &tampered);
    assert!(!passed, "{t}");
    assert!(t.contains("FAIL: root-a"), "{t}");

    // A qcow2 whose header points its L1 table past the end: refused, naming the file.
    let broken = p.join("broken.qcow2");
    fs::copy(&qcow2_b, &broken).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&broken)
        .unwrap()
        .write_all_at(&[0x7f; 8], 40)
        .unwrap();
    let (passed, t) = verify(p, &broken);
    assert!(!passed, "{t}");
    assert!(
        t.contains("broken.qcow2: not a readable qcow2 image"),
        "{t}"
    );
    let out = rke2_image(p, &["inspect", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("broken.qcow2: not a readable qcow2 image"),
        "{}",
        text(&out)
    );
    // An overlay on the good qcow2 is refused: it would make qemu-img read another file.
    let overlay = p.join("overlay.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&qcow2_b)
        .arg(&overlay));
    let (passed, t) = verify(p, &overlay);
    assert!(!passed, "{t}");
    assert!(
        t.contains("overlay.qcow2: the qcow2 refers to another file"),
        "{t}"
    );
    // No expanded temporary is left beside them.
    assert!(
        !names(p).iter().any(|n| n.contains("expanded")),
        "{:?}",
        names(p)
    );
}

#[test]
fn unknown_formats_fail_and_leave_nothing() {
    for (extra, args, says) in [
        (
            "output:\n  directory: out\n  formats: [raw, vmdk]\n",
            &[][..],
            "image.yaml:20: output.formats[1]: \"vmdk\" is not an output format: use one or more of raw, qcow2, iso, pxe, update",
        ),
        (
            "output:\n  directory: out\n",
            &["--format", "qcow"][..],
            "\"qcow\" is not an output format: use one or more of raw, qcow2, iso, pxe, update",
        ),
    ] {
        let Some(ws) = workspace(extra) else { return };
        let p = ws.path();
        let mut a = vec!["build", "image.yaml"];
        a.extend_from_slice(args);
        let out = rke2_image(p, &a);
        assert!(!out.status.success(), "{extra} {args:?}");
        let t = text(&out);
        assert!(t.contains(says), "{extra} {args:?}: {t}");
        // Refused at load: nothing under any name.
        assert!(names(&p.join("out")).is_empty(), "{:?}", names(&p.join("out")));
    }
}
