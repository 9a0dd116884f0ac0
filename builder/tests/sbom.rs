//! The SBOM (`<name>-<version>.spdx.json`), checked against oracles we did not write:
//! `pyspdxtools` (spdx-tools, the SPDX 2.3 validator) accepts it without a message; its Debian
//! packages are what `dpkg-query -W --admindir` reads from the image's own root (extracted with
//! `fsck.erofs --extract`); its container images are the `RepoTags` and config ids of the
//! preloaded tarballs' `manifest.json` (read with `tar --zstd`), their checksums `sha256sum`'s;
//! the copy on the ESP (read with `mcopy`) is the published one; two builds give the same bytes.
//!
//! Needs `RKE2_TEST_BASE` and `RKE2_TEST_PROGRAMS` (see tests/build.rs); the release is the
//! generated fixture around the stand-in rke2 (a test double).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rke2_image::payload::{self, Rke2Section, Rke2Spec};
use rke2_image::sbom;
use rke2_image::tree::Tree;
use rke2_image_contract::manifest::Manifest;
use rke2_testsupport::fixture::{self, FixtureOptions};
use rke2_testsupport::prereq;
use serde_json::Value;

const VERSION: &str = "v1.31.5+rke2r1";
const EPOCH: u64 = 1_767_225_600;

fn run_ok(c: &mut Command) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (scripts/setup-host installs it)"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pyspdxtools -i` must exit 0 and print nothing (it prints every validation message).
fn validate(path: &Path) {
    let out = Command::new("pyspdxtools")
        .arg("-i")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("pyspdxtools: {e} (scripts/setup-host installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "pyspdxtools rejects {}:\n{text}",
        path.display()
    );
}

fn tools_present() -> bool {
    prereq::program("pyspdxtools", "PyPI spdx-tools (scripts/host-python)")
        && prereq::program("dpkg-query", "dpkg")
        && prereq::program("fsck.erofs", "erofs-utils")
        && prereq::program("mcopy", "mtools")
        && prereq::program("zstd", "zstd")
}

/// A working directory with the programs, the base, the fixture release and a definition
/// preloading the core and canal images, all referenced relatively.
fn workspace(base: &Path, progs: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("rke2-sbom-")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_rke2-image"), bin.join("rke2-image")).unwrap();
    for p in ["rke2-init", "rke2-firstboot"] {
        let src = progs.join(p);
        assert!(
            src.is_file(),
            "{} missing: run scripts/build-programs",
            src.display()
        );
        fs::copy(&src, bin.join(p)).unwrap();
        fs::set_permissions(bin.join(p), fs::Permissions::from_mode(0o755)).unwrap();
    }
    if fs::hard_link(base, dir.path().join("base.tar.zst")).is_err() {
        fs::copy(base, dir.path().join("base.tar.zst")).unwrap();
    }
    let release = dir.path().join("release");
    fs::create_dir(&release).unwrap();
    let standin = rke2_testsupport::stand_in_binary().unwrap();
    fixture::write_release(&release, &standin, &FixtureOptions::new(VERSION)).unwrap();
    let def = dir.path().join("image.yaml");
    fs::write(
        &def,
        format!("apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: sbom-node\nversion: 1.0.0\nepoch: {EPOCH}\nbase:\n  archive: base.tar.zst\ninitrd:\n  init: bin/rke2-init\noutput:\n  directory: out\nrke2:\n  artifacts: release\n  version: {VERSION}\n  images: [core, canal]\n"),
    )
    .unwrap();
    (dir, def)
}

struct Built {
    dir: tempfile::TempDir,
    image: PathBuf,
    sbom: Vec<u8>,
    manifest: Manifest,
    log: String,
}

fn build(base: &Path, progs: &Path) -> Built {
    let (dir, def) = workspace(base, progs);
    // Held by a static, never dropped: removed when the test process exits.
    rke2_testsupport::scratch::remove_at_exit(dir.path());
    let out = run_ok(
        Command::new(dir.path().join("bin/rke2-image"))
            .arg("build")
            .arg(&def)
            .env_remove("SOURCE_DATE_EPOCH"),
    );
    let image = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let sbom = fs::read(dir.path().join("out/sbom-node-1.0.0.spdx.json")).unwrap();
    let manifest = serde_json::from_slice(
        &fs::read(dir.path().join("out/sbom-node-1.0.0.manifest.json")).unwrap(),
    )
    .unwrap();
    Built {
        dir,
        image,
        sbom,
        manifest,
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn built() -> Option<&'static Built> {
    static B: OnceLock<Option<Built>> = OnceLock::new();
    B.get_or_init(|| {
        let base = prereq::test_base()?;
        let progs = prereq::test_programs()?;
        if !tools_present() {
            return None;
        }
        Some(build(&base, &progs))
    })
    .as_ref()
}

fn partition(b: &Built, label: &str) -> PathBuf {
    let p = b
        .manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == label)
        .unwrap();
    let data = fs::read(&b.image).unwrap();
    let out = b.dir.path().join(format!("{label}.img"));
    fs::write(
        &out,
        &data[(p.first_lba * 512) as usize..((p.last_lba + 1) * 512) as usize],
    )
    .unwrap();
    out
}

/// `(referenceLocator of the purl, package)` for every package whose SPDXID starts with `kind`.
fn packages<'a>(doc: &'a Value, kind: &str) -> Vec<&'a Value> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with(kind))
        .collect()
}

#[test]
fn sbom_validates_and_lists_the_roots_packages() {
    let Some(b) = built() else { return };
    let path = b.dir.path().join("out/sbom-node-1.0.0.spdx.json");
    validate(&path);
    let doc: Value = serde_json::from_slice(&b.sbom).unwrap();
    assert_eq!(doc["creationInfo"]["created"], "2026-01-01T00:00:00Z");
    assert!(
        b.log.contains("sbom: sbom-node-1.0.0.spdx.json"),
        "{}",
        b.log
    );

    // dpkg's own reading of the image's root.
    // The partition copy and the extracted root are this test's own (gigabytes on a real base).
    let mut scratch = rke2_testsupport::scratch::Scratch::new();
    let root = scratch.add(partition(b, "root-a"));
    let x = scratch.add(b.dir.path().join("root"));
    let out = run_ok(
        Command::new("fsck.erofs")
            .arg("-d2")
            .arg(format!("--extract={}", x.display()))
            .arg(&root),
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("<E>"));
    let out = run_ok(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", x.join("var/lib/dpkg").display()))
            .args([
                "-W",
                "-f",
                "${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\n",
            ]),
    );
    let want: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(" ii "))
        .map(|l| l.trim_end_matches(" ii ").to_string())
        .collect();
    assert!(want.len() > 50, "{want:?}");
    let debs = packages(&doc, "SPDXRef-Deb-");
    let got: BTreeSet<String> = debs
        .iter()
        .map(|p| {
            let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
            let arch = purl
                .split("arch=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap();
            format!(
                "{} {} {arch}",
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, want);
    // A purl per package, versions percent-encoded; the base keeps the copyright files, so
    // licenses are declared where Debian's DEP-5 files say them.
    for p in &debs {
        let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        assert!(
            purl.starts_with("pkg:deb/debian/") && purl.ends_with("&distro=debian-12"),
            "{purl}"
        );
        assert!(
            !purl.split('@').nth(1).unwrap().contains(['+', ':']),
            "{purl}"
        );
    }
    // Declared exactly for the packages whose copyright file (in the extracted root) is
    // machine-readable: it starts with a `Format:` field.
    for p in &debs {
        let f = x.join(format!(
            "usr/share/doc/{}/copyright",
            p["name"].as_str().unwrap()
        ));
        let dep5 = fs::read_to_string(&f).is_ok_and(|t| t.starts_with("Format:"));
        assert_eq!(
            p["licenseDeclared"] != "NOASSERTION",
            dep5,
            "{p} ({})",
            f.display()
        );
    }
    let seccomp = debs.iter().find(|p| p["name"] == "libseccomp2").unwrap();
    assert_eq!(seccomp["licenseDeclared"], "LGPL-2.1-only");
    // libc6's copyright file is free-form.
    let libc = debs.iter().find(|p| p["name"] == "libc6").unwrap();
    assert_eq!(libc["licenseDeclared"], "NOASSERTION", "{libc}");

    // Programs: the sha256 of what went into the image.
    let programs = packages(&doc, "SPDXRef-Program-");
    for (name, kind) in [("rke2-init", "init"), ("rke2-firstboot", "node-agent")] {
        let p = programs.iter().find(|p| p["name"] == name).unwrap();
        let input = b.manifest.inputs.iter().find(|i| i.kind == kind).unwrap();
        assert_eq!(p["checksums"][0]["checksumValue"], input.sha256.as_str());
    }
    let agent = x.join("usr/bin/rke2-firstboot");
    let sum = run_ok(Command::new("sha256sum").arg(&agent));
    let sum = String::from_utf8_lossy(&sum.stdout);
    let p = programs
        .iter()
        .find(|p| p["name"] == "rke2-firstboot")
        .unwrap();
    assert_eq!(
        p["checksums"][0]["checksumValue"].as_str().unwrap(),
        sum.split_whitespace().next().unwrap()
    );
    // RKE2: version and the supervisor binary's sha256.
    let rke2 = packages(&doc, "SPDXRef-Rke2-");
    assert_eq!(rke2.len(), 1);
    assert_eq!(rke2[0]["versionInfo"], VERSION);
    let sum = run_ok(Command::new("sha256sum").arg(x.join("usr/bin/rke2")));
    assert_eq!(
        rke2[0]["checksums"][0]["checksumValue"].as_str().unwrap(),
        String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    );
}

#[test]
fn sbom_images_are_the_tarballs_manifests() {
    let Some(b) = built() else { return };
    let doc: Value = serde_json::from_slice(&b.sbom).unwrap();
    let images_dir = b.dir.path().join("release");
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    let mut tarballs: BTreeSet<(String, String)> = BTreeSet::new();
    for part in ["core", "canal"] {
        let name = format!("rke2-images-{part}.linux-amd64.tar.zst");
        let file = images_dir.join(&name);
        let out = run_ok(
            Command::new("tar")
                .arg("--zstd")
                .arg("-xOf")
                .arg(&file)
                .arg("manifest.json"),
        );
        let m: Value = serde_json::from_slice(&out.stdout).unwrap();
        for e in m.as_array().unwrap() {
            let config = e["Config"].as_str().unwrap().trim_end_matches(".json");
            for t in e["RepoTags"].as_array().unwrap() {
                want.insert((t.as_str().unwrap().to_string(), config.to_string()));
            }
        }
        let sum = run_ok(Command::new("sha256sum").arg(&file));
        let sum = String::from_utf8_lossy(&sum.stdout);
        tarballs.insert((name, sum.split_whitespace().next().unwrap().to_string()));
    }
    assert!(want.len() > 3, "{want:?}");
    let got: BTreeSet<(String, String)> = packages(&doc, "SPDXRef-Image-")
        .iter()
        .filter(|p| p["primaryPackagePurpose"] == "CONTAINER")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["checksums"][0]["checksumValue"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let got: BTreeSet<(String, String)> = packages(&doc, "SPDXRef-Airgap-")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["checksums"][0]["checksumValue"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(got, tarballs);
}

#[test]
fn sbom_on_the_esp_is_the_published_one_and_reproducible() {
    let Some(b) = built() else { return };
    let esp = partition(b, "esp");
    let copy = b.dir.path().join("esp-sbom.json");
    run_ok(Command::new("mcopy").args([
        "-n",
        "-i",
        esp.to_str().unwrap(),
        &format!("::/{}", sbom::ESP_PATH),
        copy.to_str().unwrap(),
    ]));
    assert!(fs::read(&copy).unwrap() == b.sbom, "the ESP's SBOM differs");
    // A second build from another directory: the same bytes.
    let again = build(
        &prereq::test_base().unwrap(),
        &prereq::test_programs().unwrap(),
    );
    assert!(again.sbom == b.sbom, "two builds gave different SBOMs");
}

/// Without a dpkg database the SBOM still lists the release and its images, and says why it
/// has no Debian packages (no base needed: the payload goes into a small tree).
#[test]
fn sbom_without_dpkg_status_lists_the_rest() {
    if !prereq::program("pyspdxtools", "PyPI spdx-tools (scripts/host-python)") {
        return;
    }
    let rel = tempfile::tempdir().unwrap();
    let standin = rke2_testsupport::stand_in_binary().unwrap();
    fixture::write_release(rel.path(), &standin, &FixtureOptions::new(VERSION)).unwrap();
    let s: Rke2Section = serde_saphyr::from_str(&format!(
        "artifacts: {}\nversion: {VERSION}\nimages: [core]\ncni: none\n",
        rel.path().display()
    ))
    .unwrap();
    let spec = Rke2Spec::from_section(&s, Path::new("/"), Path::new("/defs/node.yaml")).unwrap();
    let mut tree = Tree::new(0);
    let report = payload::apply(
        &mut tree,
        &spec,
        &payload::Options {
            fips: false,
            cis: false,
            selinux: false,
            allow_non_fips_supervisor: true,
            epoch: EPOCH,
        },
        &mut |_| {},
    )
    .unwrap();
    let s = sbom::build(
        &tree,
        &sbom::Inputs {
            name: "bare",
            version: "1",
            epoch: EPOCH,
            rke2: Some((VERSION, &spec.origin)),
            inputs: &[],
        },
    )
    .unwrap();
    assert_eq!(s.debs, 0);
    assert_eq!(s.images, report.images.len());
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("var/lib/dpkg/status is not in the root")),
        "{:?}",
        s.notes
    );
    let f = rel.path().join("bare.spdx.json");
    fs::write(&f, &s.json).unwrap();
    validate(&f);
}
