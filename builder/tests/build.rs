//! End-to-end builds with the real Debian base, checked by tools we did not write:
//! `sgdisk -v`, `fsck.fat -n`, `fsck.erofs`, `veritysetup verify`, plus reproducibility,
//! a rootless build and bad definitions that must leave nothing behind.
//!
//! Needs `RKE2_TEST_BASE` (a base tarball, see `rke2-image base`) and `RKE2_TEST_PROGRAMS`
//! (the directory holding the static `rke2-init`); `scripts/test` sets both.

// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rke2_image_contract::manifest::Manifest;

struct Fixture {
    base: PathBuf,
    init: PathBuf,
}

fn fixture() -> Option<Fixture> {
    let base = rke2_testsupport::prereq::test_base()?;
    let progs = rke2_testsupport::prereq::test_programs()?;
    let init = Path::new(&progs).join("rke2-init");
    assert!(
        init.is_file(),
        "{} missing: run scripts/build-programs",
        init.display()
    );
    Some(Fixture { base, init })
}

const EPOCH: u64 = 1_767_225_600;

/// A self-contained working directory readable by an unprivileged user: the programs, the
/// base (hard-linked when possible), a definition and an overlay, all referenced relatively so
/// two workspaces give the same image.
fn workspace(fx: &Fixture, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("rke2-build-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rke2-image"));
    fs::copy(&exe, bin.join("rke2-image")).unwrap();
    fs::copy(&fx.init, bin.join("rke2-init")).unwrap();
    let agent = fx.init.with_file_name("rke2-firstboot");
    if agent.is_file() {
        fs::copy(&agent, bin.join("rke2-firstboot")).unwrap();
    }
    let base = dir.path().join("base.tar.zst");
    if fs::hard_link(&fx.base, &base).is_err() {
        fs::copy(&fx.base, &base).unwrap();
    }
    let ov = dir.path().join("overlay/etc/rke2-test");
    fs::create_dir_all(&ov).unwrap();
    fs::write(ov.join("hello.conf"), "hello from the overlay\n").unwrap();
    for d in ["overlay", "overlay/etc", "overlay/etc/rke2-test"] {
        fs::set_permissions(dir.path().join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let def = dir.path().join("image.yaml");
    let text = format!(
        "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: test-node\nversion: 1.2.3\nepoch: {EPOCH}\nbase:\n  archive: base.tar.zst\noverlays:\n  - source: overlay\nkernel:\n  cmdline:\n    - console=ttyS0,115200\ninitrd:\n  init: bin/rke2-init\noutput:\n  directory: out\n{extra}"
    );
    fs::write(&def, text).unwrap();
    (dir, def)
}

/// The workspace's own copy of rke2-image (so an unprivileged user can run it).
fn rke2_image_in(def: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(def.parent().unwrap().join("bin/rke2-image"));
    c.args(args).env_remove("SOURCE_DATE_EPOCH");
    c
}

fn rke2_image(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rke2-image"));
    c.args(args).env_remove("SOURCE_DATE_EPOCH");
    c
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (install it: scripts/setup-host)"))
}

/// Copies one partition out of the image (the oracles want a whole device).
fn extract(image: &Path, m: &Manifest, label: &str, to: &Path) -> PathBuf {
    let p = m.disk.partitions.iter().find(|p| p.label == label).unwrap();
    let data = fs::read(image).unwrap();
    let start = (p.first_lba * 512) as usize;
    let end = ((p.last_lba + 1) * 512) as usize;
    let out = to.join(format!("{label}.img"));
    fs::write(&out, &data[start..end]).unwrap();
    out
}

struct Built {
    _dir: tempfile::TempDir,
    image: PathBuf,
    manifest: Manifest,
}

/// One full build shared by the checks below (it takes a while on 2 cores).
fn built() -> Option<&'static Built> {
    static B: OnceLock<Option<Built>> = OnceLock::new();
    B.get_or_init(|| {
        let fx = fixture()?;
        let (dir, def) = workspace(&fx, "");
        // Held by a static, never dropped: removed when the test process exits.
        rke2_testsupport::scratch::remove_at_exit(dir.path());
        let out = run_ok(&mut rke2_image_in(&def, &["build", def.to_str().unwrap()]));
        let image = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let manifest: Manifest = serde_json::from_slice(
            &fs::read(dir.path().join("out/test-node-1.2.3.manifest.json")).unwrap(),
        )
        .unwrap();
        Some(Built {
            _dir: dir,
            image,
            manifest,
        })
    })
    .as_ref()
}

#[test]
fn output_names_and_no_leftovers() {
    let Some(b) = built() else { return };
    assert_eq!(b.image.file_name().unwrap(), "test-node-1.2.3.raw");
    let names: Vec<String> = fs::read_dir(b.image.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    // The image, its manifest, its SBOM and the (empty) output lock; no temporaries.
    assert_eq!(
        names,
        vec![
            ".test-node-1.2.3.lock",
            "test-node-1.2.3.manifest.json",
            "test-node-1.2.3.raw",
            "test-node-1.2.3.spdx.json"
        ]
    );
    let lock = b.image.with_file_name(".test-node-1.2.3.lock");
    assert_eq!(fs::metadata(lock).unwrap().len(), 0);
    assert_eq!(fs::metadata(&b.image).unwrap().len(), b.manifest.disk.size);
}

#[test]
fn gpt_passes_sgdisk_verify() {
    let Some(b) = built() else { return };
    let out = tool("sgdisk", &["-v", b.image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "sgdisk -v: {text}"
    );
    let out = tool("sgdisk", &["-p", b.image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    for label in ["esp", "root-a", "root-a-verity", "root-b", "root-b-verity"] {
        assert!(text.contains(label), "sgdisk -p lacks {label}: {text}");
    }
    // Type GUIDs as DESIGN.md's table says.
    let out = tool("sgdisk", &["-i", "2", b.image.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"));
}

#[test]
fn esp_passes_fsck_fat_and_carries_the_security_cmdline() {
    let Some(b) = built() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let esp = extract(&b.image, &b.manifest, "esp", tmp.path());
    let out = tool("fsck.fat", &["-n", esp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fsck.fat -n: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The entry is a type #2 UKI; no type #1 entry (with an editable command line) remains.
    assert_eq!(b.manifest.boot.entry, "EFI/Linux/test-node-1.2.3-a.efi");
    let entries = tool("mdir", &["-i", esp.to_str().unwrap(), "::/loader/entries"]);
    assert!(!entries.status.success(), "loader/entries exists");
    let conf = tool(
        "mtype",
        &["-i", esp.to_str().unwrap(), "::/loader/loader.conf"],
    );
    let conf = String::from_utf8_lossy(&conf.stdout).into_owned();
    assert!(conf.lines().any(|l| l == "editor no"), "{conf}");
    let uki = tmp.path().join("uki.efi");
    run_ok(Command::new("mcopy").args([
        "-n",
        "-i",
        esp.to_str().unwrap(),
        &format!("::/{}", b.manifest.boot.entry),
        uki.to_str().unwrap(),
    ]));
    // binutils reads the sections back: the stub's and ours, ours page-aligned in memory and
    // without gaps in the file (sbverify --list warns about gaps).
    let h = run_ok(Command::new("objdump").arg("-h").arg(&uki));
    let h = String::from_utf8_lossy(&h.stdout).into_owned();
    assert!(h.contains("pei-x86-64"), "{h}");
    let mut seen = Vec::new();
    for l in h.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() == 7 && w[0].parse::<u32>().is_ok() {
            seen.push(w[1].to_string());
            if [".osrel", ".cmdline", ".initrd", ".linux"].contains(&w[1]) {
                let vma = u64::from_str_radix(w[3], 16).unwrap();
                let off = u64::from_str_radix(w[5], 16).unwrap();
                assert_eq!((vma % 4096, off % 512), (0, 0), "{l}");
            }
        }
    }
    for want in [
        ".text", ".sbat", ".sdmagic", ".osrel", ".cmdline", ".initrd", ".linux",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} missing: {h}");
    }
    let dump = |section: &str| {
        let f = tmp.path().join(section.trim_start_matches('.'));
        run_ok(
            Command::new("objcopy")
                .arg(format!("--dump-section={section}={}", f.display()))
                .arg(&uki)
                .arg(tmp.path().join("scratch.efi")),
        );
        fs::read(f).unwrap()
    };
    let options = String::from_utf8(dump(".cmdline")).unwrap();
    assert_eq!(options, b.manifest.boot.cmdline);
    for want in [
        "fips=1",
        "security=selinux",
        "selinux=1",
        "enforcing=1",
        "console=ttyS0,115200",
    ] {
        assert!(
            options.split_whitespace().any(|w| w == want),
            "{want} missing from {options}"
        );
    }
    assert!(options.contains(&format!("rke2.roothash={}", b.manifest.verity.root_hash)));
    let initrd = dump(".initrd");
    assert_eq!(initrd.len() as u64, b.manifest.boot.initrd_size);
    let osrel = String::from_utf8(dump(".osrel")).unwrap();
    assert!(
        osrel.contains("IMAGE_ID=") && osrel.contains("ID=debian"),
        "{osrel}"
    );
    // The kernel inside is the kernel's own PE image (bzImage with its EFI stub).
    assert_eq!(&dump(".linux")[..2], b"MZ");
    let boot = tool("mdir", &["-i", esp.to_str().unwrap(), "::/EFI/BOOT"]);
    assert!(String::from_utf8_lossy(&boot.stdout).contains("BOOTX64"));
}

#[test]
fn root_passes_fsck_erofs_and_verity_verify() {
    let Some(b) = built() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = extract(&b.image, &b.manifest, "root-a", tmp.path());
    let hash = extract(&b.image, &b.manifest, "root-a-verity", tmp.path());
    // The filesystem occupies the first data_blocks of the partition.
    let fs_len = b.manifest.verity.data_blocks * 4096;
    let f = fs::OpenOptions::new().write(true).open(&root).unwrap();
    f.set_len(fs_len).unwrap();
    drop(f);
    // fsck.erofs 1.5 may exit 0 on errors unless asked to print them: fail on any <E> line.
    let out = tool("fsck.erofs", &["-d2", root.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("<E>"),
        "fsck.erofs: {text}"
    );
    let verify = || {
        tool(
            "veritysetup",
            &[
                "verify",
                root.to_str().unwrap(),
                hash.to_str().unwrap(),
                &b.manifest.verity.root_hash,
            ],
        )
    };
    let out = verify();
    assert!(
        out.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One flipped byte in the data is detected.
    let mut data = fs::read(&root).unwrap();
    let i = data.len() / 2 + 123;
    data[i] ^= 0x01;
    fs::write(&root, &data).unwrap();
    let out = verify();
    assert!(!out.status.success(), "veritysetup accepted corrupted data");
}

#[test]
fn inspect_reads_everything_back() {
    let Some(b) = built() else { return };
    let out = run_ok(&mut rke2_image(&[
        "inspect",
        "--json",
        b.image.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rootHash"], b.manifest.verity.root_hash.as_str());
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["manifest"]["verity"]["rootHash"],
        b.manifest.verity.root_hash.as_str()
    );
    assert_eq!(v["verity"][0]["dataBlocks"], b.manifest.verity.data_blocks);
    // The command line comes out of the UKI's .cmdline section.
    assert_eq!(v["entries"][0]["file"], "EFI/Linux/test-node-1.2.3-a.efi");
    assert_eq!(v["entries"][0]["options"], b.manifest.boot.cmdline.as_str());
    let text = run_ok(&mut rke2_image(&["inspect", b.image.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("consistent"));
}

#[test]
fn manifest_records_inputs() {
    let Some(b) = built() else { return };
    let kinds: Vec<&str> = b.manifest.inputs.iter().map(|i| i.kind.as_str()).collect();
    for k in ["definition", "base", "overlay", "init"] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }
    let base = b.manifest.inputs.iter().find(|i| i.kind == "base").unwrap();
    let fx = fixture().unwrap();
    let out = tool("sha256sum", &[fx.base.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&base.sha256));
    // The definition names its base `base.tar.zst` (relative to the build workspace).
    assert_eq!(base.name, "base.tar.zst");
    // Inputs are named, never by host path: the manifest is also in the ESP, and another
    // checkout or cache directory must give the same bytes.
    let json = serde_json::to_string(&b.manifest).unwrap();
    for i in &b.manifest.inputs {
        assert!(!i.name.is_empty() && !i.name.contains('/'), "{i:?}");
    }
    let build_dir = b.image.parent().and_then(Path::parent);
    for dir in [fx.base.parent(), fx.init.parent(), build_dir]
        .into_iter()
        .flatten()
    {
        let dir = dir.to_str().unwrap();
        assert!(
            !json.contains(dir),
            "host path {dir} in the manifest: {json}"
        );
    }
    assert_eq!(b.manifest.image.epoch, EPOCH);
}

#[test]
fn reproducible_and_rootless() {
    let Some(b) = built() else { return };
    let fx = fixture().unwrap();
    // Same definition, built again by an unprivileged user (no root, no mounts, no loop
    // devices): byte-identical output.
    let (dir, def) = workspace(&fx, "");
    let exe = dir.path().join("bin/rke2-image");
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        exe.to_str().unwrap(),
        "build",
        def.to_str().unwrap(),
    ])
    .env_remove("SOURCE_DATE_EPOCH")
    .env("HOME", dir.path());
    let out = run_ok(&mut c);
    let image = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let meta = fs::metadata(&image).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "built by the unprivileged user"
    );
    let a = fs::read(&b.image).unwrap();
    let c2 = fs::read(&image).unwrap();
    assert!(a == c2, "two builds of the same inputs differ");
    let m1 = fs::read(b.image.with_file_name("test-node-1.2.3.manifest.json")).unwrap();
    let m2 = fs::read(image.with_file_name("test-node-1.2.3.manifest.json")).unwrap();
    assert_eq!(m1, m2);
}

/// Runs a build expected to fail; returns stderr and checks nothing was left in the output dir
/// but the (empty) output lock file.
fn failing_build(fx: &Fixture, edit: impl Fn(&str) -> String) -> String {
    let (dir, def) = workspace(fx, "");
    let text = edit(&fs::read_to_string(&def).unwrap());
    fs::write(&def, text).unwrap();
    let out = rke2_image_in(&def, &["build", def.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out_dir = dir.path().join("out");
    if out_dir.exists() {
        let left: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".test-node-1.2.3.lock")
            .collect();
        assert!(left.is_empty(), "failed build left {left:?}");
    }
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_definitions_fail_clearly_and_leave_nothing() {
    let Some(fx) = fixture() else { return };
    let e = failing_build(&fx, |t| {
        t.replace("kind: Image\n", "kind: Image\nflavour: x\n")
    });
    assert!(e.contains("image.yaml:3: flavour: unknown field"), "{e}");
    let e = failing_build(&fx, |t| t.replace("version: 1.2.3", "version: [1]"));
    assert!(e.contains("image.yaml:4"), "{e}");
    let e = failing_build(&fx, |t| {
        t.replace("archive: base.tar.zst", "archive: missing-base.tar.zst")
    });
    assert!(
        e.contains("base.archive") && e.contains("does not exist"),
        "{e}"
    );
    let e = failing_build(&fx, |t| {
        t.replace("archive: base.tar.zst", "archive: bin/rke2-init")
    });
    assert!(e.contains("not a tar, tar.gz or tar.zst archive"), "{e}");
    let e = failing_build(&fx, |t| format!("{t}disk:\n  rootSize: 64MiB\n"));
    assert!(e.contains("disk.rootSize") && e.contains("raise"), "{e}");
    let e = failing_build(&fx, |t| t.replace("console=ttyS0,115200", "enforcing=0"));
    assert!(e.contains("enforcing"), "{e}");
}

/// A definition with an `rke2:` section and the CIS profile, built from a generated release
/// (the stand-in rke2 is a test double): the payload's version, images and checks reach the
/// manifest and `inspect`, and the image still passes the format oracles.
#[test]
fn build_with_rke2_payload_and_cis() {
    let Some(fx) = fixture() else { return };
    const VERSION: &str = "v1.31.5+rke2r1";
    let (dir, def) = workspace(&fx, &format!("rke2:\n  artifacts: release\n  version: {VERSION}\n  images: [core, canal]\nsecurity:\n  cis: true\n"));
    let release = dir.path().join("release");
    fs::create_dir(&release).unwrap();
    let bin = rke2_testsupport::stand_in_binary().unwrap();
    rke2_testsupport::fixture::write_release(
        &release,
        &bin,
        &rke2_testsupport::fixture::FixtureOptions::new(VERSION),
    )
    .unwrap();
    let out = run_ok(&mut rke2_image_in(&def, &["build", def.to_str().unwrap()]));
    let image = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let out = run_ok(&mut rke2_image_in(
        &def,
        &["inspect", "--json", image.to_str().unwrap()],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    let m = &v["manifest"];
    assert_eq!(m["rke2"]["version"], VERSION);
    assert!(!m["rke2"]["images"].as_array().unwrap().is_empty());
    let checks: Vec<String> = m["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["name"].as_str().unwrap(),
                c["result"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        checks.iter().any(|c| c.starts_with("kernel-config=")),
        "{checks:?}"
    );
    assert!(!checks.iter().any(|c| c.ends_with("=failed")), "{checks:?}");
    let kinds: Vec<&str> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.len() > 5,
        "release artifacts recorded as inputs: {kinds:?}"
    );
    let text = run_ok(&mut rke2_image_in(
        &def,
        &["inspect", image.to_str().unwrap()],
    ));
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("rke2       {VERSION}")));
    let out = tool("sgdisk", &["-v", image.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No problems found"));
}
