//! The `update` output (`output.formats: [raw, update]`, issue 13) from the synthetic base,
//! checked with outside programs: GNU `tar -tv` lists the members in the contract's order with
//! fixed headers, `openssl pkeyutl -verify -rawin` accepts `update.json.sig` with the public
//! half of `signing.key`, `veritysetup verify` accepts root.img/verity.img with the root hash,
//! every member's sha256 is update.json's, `uki-b.efi` carries `rke2.slot=b`, root.img is the
//! raw image's root-a bytes, the policy and keys baked into the root (read back with
//! `fsck.erofs --extract`) are what the definition and openssl say, `inspect`/`verify` read
//! the bundle and name a tampered member, and two builds in different directories give the
//! same bundle. Plus the definition errors of the `update:` section, named by key.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::update::{self, UpdateInfo};
use rke2_testsupport::prereq;

mod common;
use common::{ok, text};

const STEM: &str = "upd-1.0";

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Keys made once with openssl (`key.pem`/`pub.pem` sign, `release.pem`/`release.pub` is an
/// extra trusted key, `other.pub` a key that signed nothing), shared by every workspace so two
/// builds sign with the same key.
fn keys() -> Option<tempfile::TempDir> {
    if !prereq::program("openssl", "openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    for (k, pubk) in [
        ("key.pem", "pub.pem"),
        ("release.pem", "release.pub"),
        ("other.pem", "other.pub"),
    ] {
        ok(Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(dir.path().join(k)));
        ok(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.path().join(k))
            .arg("-out")
            .arg(dir.path().join(pubk)));
    }
    Some(dir)
}

/// A workspace: the base, an init, the keys and a definition with `extra` appended.
fn workspace(keys: &Path, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Enough data for more than one hash level.
    fs::write(
        p.join("base.tar"),
        common::base_tar(vec![(
            "opt/data.bin".into(),
            common::noise(0x9E37_79B9_7F4A_7C15, 3_000_000),
        )]),
    )
    .unwrap();
    fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
    // An overlay that tries to add a trusted key behind the definition's back.
    let ov_keys = p.join("ov").join(update::KEYS_DIR);
    fs::create_dir_all(&ov_keys).unwrap();
    fs::copy(keys.join("other.pub"), ov_keys.join("sneaky.pem")).unwrap();
    for k in ["key.pem", "pub.pem", "release.pub", "other.pub"] {
        fs::copy(keys.join(k), p.join(k)).unwrap();
    }
    fs::write(
        p.join("image.yaml"),
        format!(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: upd\nversion: \"1.0\"\n\
             base:\n  archive: base.tar\ninitrd:\n  init: init\n\
             security:\n  selinux: disabled\nkernel:\n  cmdline:\n    - console=ttyS0,115200\n\
             disk:\n  espSize: 64MiB\n  rootSize: 24MiB\n  stateSize: 256MiB\n\
             output:\n  directory: out\nepoch: 1700000000\n{extra}"
        ),
    )
    .unwrap();
    dir
}

const SIGNED: &str = "overlays:\n  - source: ov\nsigning:\n  key: key.pem\nupdate:\n  trustedKeys: [release.pub]\n  tries: 2\n  healthTimeoutSeconds: 120\n";

fn rke2_image(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rke2-image"));
    c.env_remove("SOURCE_DATE_EPOCH")
        .env("RKE2_IMAGE_CACHE", dir.join("cache"));
    c
}

fn build(keys: &Path) -> tempfile::TempDir {
    let w = workspace(keys, SIGNED);
    ok(rke2_image(w.path())
        .args(["build", "--format", "raw,update"])
        .arg(w.path().join("image.yaml")));
    w
}

fn bundle(d: &Path) -> PathBuf {
    d.join(format!("out/{STEM}.update"))
}

#[test]
fn bundle_members_signature_verity_and_reproducible() {
    let Some(keys) = keys() else { return };
    if !prereq::program("veritysetup", "cryptsetup-bin")
        || !prereq::program("tar", "tar")
        || !prereq::program("fsck.erofs", "erofs-utils")
    {
        return;
    }
    let a = build(keys.path());
    let file = bundle(a.path());
    let bytes = fs::read(&file).unwrap();

    // GNU tar: the members in order, read-only, owned by 0:0, dated at the epoch.
    let list = text(&ok(Command::new("tar").args(["--utc", "-tvf"]).arg(&file)));
    let mut want = vec![update::INFO, update::SIGNATURE];
    want.extend(update::MEMBERS);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), want.len(), "{list}");
    for (l, name) in lines.iter().zip(&want) {
        assert!(l.starts_with("-r--r--r-- 0/0 "), "{l}");
        assert!(l.ends_with(&format!(" 2023-11-14 22:13 {name}")), "{l}");
    }

    let x = tempfile::tempdir().unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .current_dir(x.path()));
    let member = |n: &str| x.path().join(n);
    let json = fs::read(member(update::INFO)).unwrap();
    let info: UpdateInfo = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        (info.image.as_str(), info.version.as_str(), info.epoch),
        ("upd", "1.0", 1_700_000_000)
    );
    assert_eq!(info.architecture, "x86-64");
    assert!(json.ends_with(b"}\n"));

    // The signature: openssl with signing.key's public half; not with another key.
    let verify_sig = |pubkey: &str| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(keys.path().join(pubkey))
            .arg("-rawin")
            .arg("-in")
            .arg(member(update::INFO))
            .arg("-sigfile")
            .arg(member(update::SIGNATURE))
            .output()
            .unwrap()
    };
    let v = verify_sig("pub.pem");
    assert!(v.status.success(), "openssl: {}", text(&v));
    assert!(!verify_sig("other.pub").status.success());

    // Every member as update.json pins it.
    let names: Vec<&str> = info.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, update::MEMBERS);
    for m in &info.members {
        let data = fs::read(member(&m.name)).unwrap();
        assert_eq!(
            (data.len() as u64, sha256(&data)),
            (m.size, m.sha256.clone()),
            "{}",
            m.name
        );
    }
    let root = fs::read(member(update::ROOT)).unwrap();
    assert_eq!(root.len() as u64, info.root_size);
    assert_eq!(
        fs::metadata(member(update::VERITY)).unwrap().len(),
        info.verity_size
    );

    // dm-verity: the root under its hash device with the root hash.
    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(member(update::ROOT))
        .arg(member(update::VERITY))
        .arg(&info.root_hash)
        .output()
        .unwrap();
    assert!(out.status.success(), "veritysetup verify: {}", text(&out));

    // The UKIs: slot a's is the raw image's ESP entry; slot b's carries rke2.slot=b.
    let m: Manifest = serde_json::from_slice(
        &fs::read(a.path().join(format!("out/{STEM}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(info.root_hash, m.verity.root_hash);
    assert_eq!(m.ukis.len(), 1, "the raw image has one entry");
    assert_eq!(m.ukis[0].path, "EFI/Linux/upd-1.0-a.efi");
    assert!(m.esp_files.iter().all(|f| !f.path.ends_with("-b.efi")));
    let uki_a = fs::read(member(update::UKI_A)).unwrap();
    assert_eq!(sha256(&uki_a), m.ukis[0].sha256);
    for (slot, file) in [('a', update::UKI_A), ('b', update::UKI_B)] {
        let pe = fs::read(member(file)).unwrap();
        let e = rke2_image::inspect::uki_entry(file, &pe).unwrap();
        assert!(e.options.contains(&format!("rke2.slot={slot}")), "{e:?}");
        assert!(
            e.options
                .contains(&format!("rke2.roothash={}", info.root_hash)),
            "{e:?}"
        );
        assert!(e.options.contains("console=ttyS0,115200"));
        let listed = &info.cmdlines[if slot == 'a' { 0 } else { 1 }];
        assert_eq!(
            (listed.slot.as_str(), &listed.cmdline),
            (&*slot.to_string(), &e.options)
        );
    }
    assert_eq!(info.cmdlines[0].cmdline, m.ukis[0].cmdline);

    // manifest.json: the embedded manifest (no outputs); the published one lists the bundle.
    let embedded: Manifest =
        serde_json::from_slice(&fs::read(member(update::MANIFEST)).unwrap()).unwrap();
    assert!(embedded.outputs.is_empty());
    assert_eq!(embedded.verity, m.verity);
    let rec = m
        .outputs
        .iter()
        .find(|o| o.path == format!("{STEM}.update"))
        .unwrap_or_else(|| panic!("bundle not in outputs: {:?}", m.outputs));
    assert_eq!(
        (rec.size, rec.sha256.clone()),
        (bytes.len() as u64, sha256(&bytes))
    );
    assert!(m
        .inputs
        .iter()
        .any(|i| i.kind == "trusted-key" && i.name == "release.pub"));

    // root.img is the raw image's root-a.
    let raw = fs::read(a.path().join(format!("out/{STEM}.raw"))).unwrap();
    let part = m
        .disk
        .partitions
        .iter()
        .find(|p| p.label == "root-a")
        .unwrap();
    let start = (part.first_lba * 512) as usize;
    assert!(
        raw[start..start + root.len()] == root[..],
        "root.img differs from root-a"
    );

    // What the root carries for the node (fsck.erofs reads it back).
    let tree = x.path().join("tree");
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(member(update::ROOT))
        .output()
        .unwrap();
    assert!(out.status.success(), "fsck.erofs: {}", text(&out));
    let policy: update::Policy =
        serde_json::from_slice(&fs::read(tree.join(update::POLICY)).unwrap()).unwrap();
    assert_eq!((policy.tries, policy.health_timeout_seconds), (2, 120));
    let keys_dir = tree.join(update::KEYS_DIR);
    assert_eq!(
        fs::read(keys_dir.join("image.pem")).unwrap(),
        fs::read(keys.path().join("pub.pem")).unwrap(),
        "image.pem is not what `openssl pkey -pubout` writes"
    );
    assert_eq!(
        fs::read(keys_dir.join("trusted-1.pem")).unwrap(),
        fs::read(keys.path().join("release.pub")).unwrap()
    );
    let mut names: Vec<String> = fs::read_dir(&keys_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Exactly the definition's keys: the overlay's sneaky.pem is gone.
    assert_eq!(names, ["image.pem", "trusted-1.pem"]);
    assert!(tree.join(update::ESP_MOUNT).is_dir());
    for unit in [
        "systemd-boot-system-token.service",
        "systemd-boot-update.service",
    ] {
        assert_eq!(
            fs::read_link(tree.join("etc/systemd/system").join(unit)).unwrap(),
            Path::new("/dev/null"),
            "{unit} not masked"
        );
    }

    // inspect reads the bundle; verify checks the signature with --key.
    let shown = text(&ok(rke2_image(a.path()).arg("inspect").arg(&file)));
    assert!(shown.contains(&info.root_hash), "{shown}");
    assert!(shown.contains("signature  present, 64 bytes"), "{shown}");
    for n in update::MEMBERS {
        assert!(shown.contains(n), "{n} missing: {shown}");
    }
    let shown = text(&ok(rke2_image(a.path())
        .arg("verify")
        .arg(&file)
        .arg("--key")
        .arg(keys.path().join("pub.pem"))));
    assert!(shown.contains("signature  verified"), "{shown}");
    let wrong = rke2_image(a.path())
        .arg("verify")
        .arg(&file)
        .arg("--key")
        .arg(keys.path().join("other.pub"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("does not verify"), "{}", text(&wrong));
    // One flipped byte inside root.img: inspect names the member.
    let mut bad = bytes.clone();
    let at = bad.len() - 1024 - root.len() / 2;
    bad[at] ^= 0x01;
    let tampered = x.path().join("tampered.update");
    fs::write(&tampered, &bad).unwrap();
    let out = rke2_image(a.path())
        .arg("inspect")
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("member root.img: sha256"),
        "{}",
        text(&out)
    );

    // A second build elsewhere: the same bundle.
    let b = build(keys.path());
    assert!(
        bytes == fs::read(bundle(b.path())).unwrap(),
        "the bundle differs between two builds"
    );
}

#[test]
fn update_definition_errors_name_the_key() {
    let Some(keys) = keys() else { return };
    // (extra, build --format, output.formats, the key the error names)
    for (extra, cli, formats, says) in [
        // --format update replaces output.formats after the load: the build refuses too.
        ("", Some("raw,update"), None, "signing.key"),
        ("", None, Some("[update]"), "signing.key"),
        (
            "signing:\n  key: key.pem\nupdate:\n  trustedKeys: [key.pem]\n",
            None,
            None,
            "update.trustedKeys[0]",
        ),
        ("update:\n  tries: 0\n", None, None, "update.tries"),
    ] {
        let w = workspace(keys.path(), extra);
        if let Some(f) = formats {
            let def = w.path().join("image.yaml");
            let t = fs::read_to_string(&def).unwrap().replace(
                "  directory: out\n",
                &format!("  directory: out\n  formats: {f}\n"),
            );
            fs::write(&def, t).unwrap();
        }
        let mut c = rke2_image(w.path());
        c.arg("build");
        if let Some(f) = cli {
            c.args(["--format", f]);
        }
        let out = c.arg(w.path().join("image.yaml")).output().unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "{extra}: {t}");
        assert!(t.contains("image.yaml") && t.contains(says), "{extra}: {t}");
        if says == "signing.key" {
            assert!(
                t.contains("openssl genpkey -algorithm ed25519 -out KEY.pem"),
                "{t}"
            );
        }
        assert!(!w.path().join("out").join(format!("{STEM}.update")).exists());
    }
}
