//! The `pxe` output (`output.formats: [raw, pxe]`) from the synthetic base: the four files,
//! their records in the published manifest, `boot.ipxe` (relative names, the manifest's root
//! hash), `rootfs.img` read back by GNU cpio and its root checked by `veritysetup verify`, and
//! two builds in different directories giving the same bytes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_image_contract::manifest::Manifest;
use rke2_testsupport::prereq;

mod common;
use common::ok;
const STEM: &str = "pxe-1.0";
const FILES: [&str; 4] = ["boot.ipxe", "initrd", "rootfs.img", "vmlinuz"];

fn base_tar() -> Vec<u8> {
    // Enough data for more than one hash level.
    common::base_tar(vec![(
        "opt/data.bin".into(),
        common::noise(0x2545_F491_4F6C_DD1D, 3_000_000),
    )])
}

/// Builds the synthetic image with `formats` in a fresh directory; returns it.
fn build(formats: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("base.tar"), base_tar()).unwrap();
    fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
    fs::write(
        p.join("image.yaml"),
        format!(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: pxe\nversion: \"1.0\"\n\
             base:\n  archive: base.tar\ninitrd:\n  init: init\n\
             security:\n  selinux: disabled\nkernel:\n  cmdline:\n    - console=ttyS0,115200\n\
             disk:\n  espSize: 64MiB\n  rootSize: 24MiB\n  stateSize: 256MiB\n\
             output:\n  directory: out\n  formats: {formats}\nepoch: 1700000000\n"
        ),
    )
    .unwrap();
    ok(Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .arg("build")
        .arg(p.join("image.yaml"))
        .env_remove("SOURCE_DATE_EPOCH")
        .env("RKE2_IMAGE_CACHE", p.join("cache")));
    dir
}

fn pxe_dir(d: &Path) -> PathBuf {
    d.join(format!("out/{STEM}.pxe"))
}

fn manifest(d: &Path) -> Manifest {
    serde_json::from_slice(&fs::read(d.join(format!("out/{STEM}.manifest.json"))).unwrap()).unwrap()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn pxe_files_script_rootfs_and_reproducible() {
    if !prereq::program("cpio", "cpio") || !prereq::program("veritysetup", "cryptsetup-bin") {
        return;
    }
    let a = build("[raw, pxe]");
    let dir = pxe_dir(a.path());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, FILES);
    // Nothing staged is left behind.
    for e in fs::read_dir(a.path().join("out")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".partial-") && !n.contains(".tmp-"), "{n}");
    }

    // Every file recorded with its size and sha256 in the published manifest.
    let m = manifest(a.path());
    for f in FILES {
        let data = fs::read(dir.join(f)).unwrap();
        let rec = m
            .outputs
            .iter()
            .find(|o| o.path == format!("{STEM}.pxe/{f}"))
            .unwrap_or_else(|| panic!("{f} not in the manifest's outputs: {:?}", m.outputs));
        assert_eq!(
            (rec.size, rec.sha256.as_str()),
            (data.len() as u64, &*sha256(&data))
        );
    }

    // The kernel is the base's; the initrd is the UKI's initrd, padded to 4 bytes.
    let kernel = fs::read(dir.join("vmlinuz")).unwrap();
    assert_eq!(kernel, vec![0x4d; 8192]);
    let initrd = fs::read(dir.join("initrd")).unwrap();
    assert_eq!(initrd.len() % 4, 0);
    let unpadded = initrd.len() - initrd.iter().rev().take_while(|b| **b == 0).count();
    assert!(initrd.len() - unpadded < 4);
    assert_eq!(&initrd[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd initrd");

    // boot.ipxe: relative names only, the UKI's command line with the manifest's root hash.
    let script = fs::read_to_string(dir.join("boot.ipxe")).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let uki_line = &m.ukis[0].cmdline;
    let kernels: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("kernel "))
        .collect();
    assert_eq!(kernels.len(), 2, "{script}");
    for k in &kernels {
        assert!(
            k.starts_with(&format!(
                "kernel vmlinuz initrd=initrd initrd=rootfs.img {uki_line} rke2.root=initramfs"
            )),
            "{k}"
        );
        assert!(k.contains(&format!("rke2.roothash={}", m.verity.root_hash)));
        for key in ["rke2.slot=a", "console=ttyS0,115200", "selinux="] {
            assert!(k.contains(key), "{key} missing: {k}");
        }
    }
    let initrds: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("initrd "))
        .collect();
    assert_eq!(initrds, ["initrd initrd", "initrd rootfs.img"]);
    assert!(!script.contains("/out/") && !script.contains(&*a.path().to_string_lossy()));

    // rootfs.img: GNU cpio lists exactly the root and its hash device; veritysetup accepts
    // them with the manifest's root hash and refuses one flipped bit.
    let rootfs = dir.join("rootfs.img");
    let list = ok(Command::new("cpio")
        .args(["-it", "--quiet", "-F"])
        .arg(&rootfs));
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "rke2-root\nrke2-root/root.img\nrke2-root/root.verity\n"
    );
    let x = tempfile::tempdir().unwrap();
    ok(Command::new("cpio")
        .args(["-idm", "--quiet", "-F"])
        .arg(&rootfs)
        .current_dir(x.path()));
    let root = x.path().join("rke2-root/root.img");
    let hash = x.path().join("rke2-root/root.verity");
    assert_eq!(
        fs::metadata(&root).unwrap().len(),
        m.verity.data_blocks * 4096
    );
    let verify = || {
        Command::new("veritysetup")
            .arg("verify")
            .arg(&root)
            .arg(&hash)
            .arg(&m.verity.root_hash)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut data = fs::read(&root).unwrap();
    let i = data.len() / 2 + 77;
    data[i] ^= 0x10;
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    fs::write(&root, &data).unwrap();
    assert!(!verify().status.success(), "corruption not detected");

    // A second build elsewhere: the same bytes.
    let b = build("[raw, pxe]");
    for f in FILES {
        assert!(
            fs::read(dir.join(f)).unwrap() == fs::read(pxe_dir(b.path()).join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    assert_eq!(
        fs::read(a.path().join(format!("out/{STEM}.manifest.json"))).unwrap(),
        fs::read(b.path().join(format!("out/{STEM}.manifest.json"))).unwrap()
    );
}

#[test]
fn default_formats_emit_no_pxe_directory() {
    let a = build("[raw]");
    assert!(!pxe_dir(a.path()).exists());
    assert!(manifest(a.path())
        .outputs
        .iter()
        .all(|o| !o.path.contains(".pxe/")));
}
