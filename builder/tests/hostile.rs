//! Hostile bases, definitions and process faults against `rke2-image build` (issue 17): one
//! test per class. Every base is made here (a synthetic root small enough to build in a second:
//! the boot modules listed as built in, a kernel configuration with every required option);
//! every refusal must name the file and the key or entry, print no cause twice and no library
//! internals, and leave nothing under a final name in the output directory. Accepted inputs
//! are read back from the image with `inspect --json`, `fsck.erofs --extract` and `dump.erofs`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rke2_image::publish;
use tar::{EntryType, Header};

mod common;
const EPOCH: u64 = 1_700_000_000;

/// One tar entry written by hand, so names the `tar` crate would normalise (`./`) and
/// fields it would refuse stay as a hostile archive has them.
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: &'a [u8],
    uid: u64,
    mtime: u64,
}

impl<'a> Raw<'a> {
    fn file(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            name: name.as_bytes(),
            kind: EntryType::Regular,
            link: b"",
            data,
            uid: 0,
            mtime: EPOCH,
        }
    }
}

fn append_raw(out: &mut Vec<u8>, e: &Raw) {
    let mut h = Header::new_ustar();
    {
        let o = h.as_old_mut();
        o.name[..e.name.len()].copy_from_slice(e.name);
        o.linkname[..e.link.len()].copy_from_slice(e.link);
    }
    h.set_entry_type(e.kind);
    h.set_mode(if e.kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(e.uid);
    h.set_gid(0);
    h.set_mtime(e.mtime);
    h.set_size(e.data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(e.data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A PAX extended header carrying `records` for the entry that follows.
fn append_pax(out: &mut Vec<u8>, records: &[(&str, &str)]) {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length field counts itself.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    append_raw(
        out,
        &Raw {
            name: b"PaxHeaders/x",
            kind: EntryType::XHeader,
            link: b"",
            data: &data,
            uid: 0,
            mtime: EPOCH,
        },
    );
}

/// The synthetic root every test starts from (without the end-of-archive blocks, so more
/// entries, or another archive's, can follow).
fn base_entries() -> Vec<u8> {
    let mut out = Vec::new();
    let files = common::base_files();
    for dir in common::BASE_DIRS {
        append_raw(
            &mut out,
            &Raw {
                kind: EntryType::Directory,
                ..Raw::file(dir, b"")
            },
        );
    }
    for (name, data) in &files {
        append_raw(&mut out, &Raw::file(name, data));
    }
    out
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// A build directory: base, init program, overlay, definition, output directory.
struct Ws {
    dir: tempfile::TempDir,
}

const STEM: &str = "hostile-1.0";

impl Ws {
    fn new(base: &[u8], extra_yaml: &str) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("base.tar"), base).unwrap();
        fs::write(p.join("init"), b"#!/bin/sh\n").unwrap();
        fs::create_dir_all(p.join("overlay/etc/app")).unwrap();
        fs::write(p.join("overlay/etc/app/app.conf"), b"setting = 1\n").unwrap();
        let ws = Ws { dir };
        ws.definition(extra_yaml);
        ws
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn def(&self) -> PathBuf {
        self.path().join("image.yaml")
    }

    fn out(&self) -> PathBuf {
        self.path().join("out")
    }

    /// `extra_yaml` is appended; keys it names replace the defaults below (no duplicates).
    fn definition(&self, extra_yaml: &str) {
        let mut text = String::from(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: hostile\nversion: \"1.0\"\n",
        );
        let defaults = [
            ("base:", "base:\n  archive: base.tar\n"),
            ("initrd:", "initrd:\n  init: init\n"),
            ("security:", "security:\n  selinux: disabled\n"),
            (
                "disk:",
                "disk:\n  espSize: 64MiB\n  rootSize: 8MiB\n  stateSize: 256MiB\n",
            ),
            ("output:", "output:\n  directory: out\n"),
            ("epoch:", "epoch: 1700000000\n"),
            ("overlays:", "overlays:\n  - source: overlay\n"),
        ];
        for (key, yaml) in defaults {
            if !extra_yaml.lines().any(|l| l.starts_with(key)) {
                text.push_str(yaml);
            }
        }
        text.push_str(extra_yaml);
        fs::write(self.def(), text).unwrap();
    }

    fn build(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_rke2-image"))
            .arg("build")
            .arg(self.def())
            .env_remove("SOURCE_DATE_EPOCH")
            .env("RKE2_IMAGE_CACHE", self.path().join("cache"))
            .output()
            .unwrap()
    }

    /// A build that must fail: returns its error line, after the checks every refusal shares.
    fn refused(&self) -> String {
        let out = self.build();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "build succeeded:\n{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in:\n{err}"))
            .to_string();
        eprintln!("refused as expected: {line}");
        assert_clean_message(&line);
        assert_nothing_final(&self.out());
        line
    }

    fn built(&self) -> Built {
        let out = self.build();
        assert!(
            out.status.success(),
            "build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Built {
            image: self.out().join(format!("{STEM}.raw")),
            work: self.path().to_path_buf(),
        }
    }
}

/// No cause repeated ("X: X"), no Rust or library internals.
fn assert_clean_message(line: &str) {
    for internal in [
        "DuplicateKeyPolicy",
        "untagged enum",
        "__Nonexhaustive",
        "Options",
        "Error {",
        "os error",
    ] {
        assert!(!line.contains(internal), "internals in: {line}");
    }
    let parts: Vec<&str> = line.split(": ").collect();
    for w in parts.windows(2) {
        assert!(w[0] != w[1], "repeated cause {:?} in: {line}", w[0]);
    }
    for (i, p) in parts.iter().enumerate() {
        if p.len() > 20 {
            assert!(
                !parts[i + 1..].iter().any(|q| q.contains(p)),
                "cause {p:?} printed twice in: {line}"
            );
        }
    }
}

/// Nothing under a final name (`*.raw`, `*.manifest.json`), no temporaries left behind.
fn assert_nothing_final(out: &Path) {
    let Ok(rd) = fs::read_dir(out) else { return };
    for e in rd {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == format!(".{STEM}.lock"),
            "refused build left {name} in {}",
            out.display()
        );
    }
}

struct Built {
    image: PathBuf,
    work: PathBuf,
}

impl Built {
    fn inspect(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_rke2-image"))
            .args(["inspect", "--json"])
            .arg(&self.image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The root-a EROFS as a file of its own, from the manifest's partition table.
    fn root_fs(&self) -> PathBuf {
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(self.image.with_file_name(format!("{STEM}.manifest.json"))).unwrap(),
        )
        .unwrap();
        let part = manifest["disk"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == "root-a")
            .unwrap()
            .clone();
        let first = part["firstLba"]
            .as_u64()
            .or(part["first_lba"].as_u64())
            .unwrap();
        let last = part["lastLba"].as_u64().unwrap();
        // The whole partition, as the kernel sees it: bookworm's fsck.erofs (erofs-utils 1.5)
        // reads a 12-byte xattr header after every inode, even one without xattrs, so an image
        // cut at the filesystem's last byte fails when its last inode ends there.
        let mut buf = vec![0u8; ((last + 1 - first) * 512) as usize];
        fs::File::open(&self.image)
            .unwrap()
            .read_exact_at(&mut buf, first * 512)
            .unwrap();
        let p = self.work.join("root.erofs");
        fs::write(&p, buf).unwrap();
        p
    }

    /// `fsck.erofs --extract` of the root: the tree as the kernel would show it.
    fn extract(&self) -> PathBuf {
        let fs_path = self.root_fs();
        let dir = self.work.join("extracted");
        let out = Command::new("fsck.erofs")
            .arg(format!("--extract={}", dir.display()))
            .arg(&fs_path)
            .output()
            .expect("fsck.erofs (erofs-utils, installed by scripts/setup-host)");
        assert!(
            out.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    fn dump(&self, path: &str) -> String {
        let out = Command::new("dump.erofs")
            .arg(format!("--path={path}"))
            .arg(self.root_fs())
            .output()
            .expect("dump.erofs (erofs-utils)");
        assert!(out.status.success(), "dump.erofs {path}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn with_entries(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut t = base_entries();
    f(&mut t);
    finish(t)
}

// --- security settings cannot be overridden by the definition ---------------------------------

#[test]
fn cmdline_items_that_override_security_are_refused_at_load() {
    let ws = Ws::new(&finish(base_entries()), "");
    for (item, needle) in [
        ("'\"enforcing=0\"'", "double quotes"),
        ("'\"init=/bin/sh\"'", "double quotes"),
        ("selinux=0", "`selinux`"),
        ("fips=0", "`fips`"),
        ("init=/bin/sh", "`init`"),
        ("rke2.debug", "`rke2.debug`"),
        ("systemd.unit=emergency.target", "`systemd.unit`"),
        ("rd.systemd.unit=rescue.target", "`rd.systemd.unit`"),
        ("systemd.debug-shell", "`systemd.debug_shell`"),
        ("single", "`single`"),
        ("'--'", "end the kernel's parameters"),
        ("'a=1 fips=0'", "several parameters"),
        ("'k=\"v fips=0'", "double quotes"),
    ] {
        ws.definition(&format!("kernel:\n  cmdline:\n    - quiet\n    - {item}\n"));
        let e = ws.refused();
        assert!(
            e.contains("image.yaml:") && e.contains("kernel.cmdline[1]"),
            "{item}: {e}"
        );
        assert!(e.contains(needle), "{item}: {e}");
        assert!(!ws.out().exists(), "{item}: output directory created");
    }
    // The README's example written unquoted: YAML's flow syntax splits it; the fix is named.
    ws.definition("kernel:\n  cmdline: [console=ttyS0,115200]\n");
    let e = ws.refused();
    assert!(
        e.contains("kernel.cmdline[1]") && e.contains("[\"console=ttyS0,115200\"]"),
        "{e}"
    );
}

#[test]
fn description_cannot_inject_loader_entry_lines() {
    let ws = Ws::new(
        &finish(base_entries()),
        "description: \"Node\\noptions selinux=0 init=/bin/sh\\nlinux /rke2/a/evil\"\n",
    );
    let e = ws.refused();
    assert!(
        e.contains("image.yaml:") && e.contains("description") && e.contains("control character"),
        "{e}"
    );
}

#[test]
fn command_line_is_capped_at_what_the_kernel_keeps() {
    let ws = Ws::new(
        &finish(base_entries()),
        &format!("kernel:\n  cmdline:\n    - \"x={}\"\n", "a".repeat(1950)),
    );
    let e = ws.refused();
    assert!(e.contains("kernel.cmdline") && e.contains("2047"), "{e}");
}

// --- broken images are not reported as success -------------------------------------------------

#[test]
fn root_entry_that_is_not_a_directory_is_refused() {
    for (name, kind) in [
        (&b"./"[..], EntryType::Link),
        (b".", EntryType::Link),
        (b"./", EntryType::Regular),
        (b"./", EntryType::Symlink),
    ] {
        let base = with_entries(|t| {
            append_raw(
                t,
                &Raw {
                    name,
                    kind,
                    link: b"etc/passwd",
                    ..Raw::file("", b"")
                },
            )
        });
        let ws = Ws::new(&base, "");
        let e = ws.refused();
        assert!(
            e.contains("base.tar") && e.contains("root of the tree") && e.contains("directory"),
            "{e}"
        );
    }
}

/// GNU tar's PAX sparse formats (what `--sparse --format=posix` writes) are refused by name;
/// old-GNU sparse files are read with their real contents.
#[test]
fn pax_sparse_refused_old_gnu_sparse_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("opt")).unwrap();
    let f = fs::File::create(src.join("opt/holes.bin")).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", 2 << 20).unwrap();
    f.write_all_at(b"tail", (4 << 20) - 4).unwrap();
    drop(f);
    let gnu_tar = |args: &[&str], name: &str| -> Vec<u8> {
        let out = dir.path().join(name);
        let st = Command::new("tar")
            .args(args)
            .arg("-cf")
            .arg(&out)
            .args([
                "-C",
                src.to_str().unwrap(),
                "--owner=0",
                "--group=0",
                "opt/holes.bin",
            ])
            .status()
            .expect("GNU tar");
        assert!(st.success());
        fs::read(out).unwrap()
    };
    for version in ["0.0", "0.1", "1.0"] {
        let sparse = gnu_tar(
            &[
                "--sparse",
                "--format=posix",
                &format!("--sparse-version={version}"),
            ],
            &format!("pax-{version}.tar"),
        );
        let mut base = base_entries();
        base.extend_from_slice(&sparse);
        let ws = Ws::new(&base, "");
        let e = ws.refused();
        assert!(
            e.contains("base.tar")
                && e.contains("PAX sparse")
                && e.contains("holes.bin")
                && e.contains("--format=gnu"),
            "{version}: {e}"
        );
    }
    let mut base = base_entries();
    base.extend_from_slice(&gnu_tar(&["--sparse", "--format=gnu"], "gnu.tar"));
    let ws = Ws::new(&base, "");
    let root = ws.built().extract();
    let data = fs::read(root.join("opt/holes.bin")).unwrap();
    assert_eq!(data.len(), 4 << 20);
    assert_eq!(&data[..4], b"head");
    assert_eq!(&data[2 << 20..(2 << 20) + 6], b"middle");
    assert_eq!(&data[data.len() - 4..], b"tail");
    assert!(data[4..2 << 20].iter().all(|&b| b == 0));
}

#[test]
fn ids_above_32_bits_are_refused_not_truncated() {
    for (key, value) in [("uid", "4294968296"), ("gid", "18446744073709551615")] {
        let base = with_entries(|t| {
            append_pax(t, &[(key, value)]);
            append_raw(t, &Raw::file("opt/owned", b"x"));
        });
        let ws = Ws::new(&base, "");
        let e = ws.refused();
        assert!(
            e.contains("base.tar") && e.contains("opt/owned") && e.contains("32 bits"),
            "{e}"
        );
    }
    // The largest 32-bit id is kept as it is.
    let base = with_entries(|t| {
        append_pax(t, &[("uid", "4294967295")]);
        append_raw(t, &Raw::file("opt/owned", b"x"));
    });
    let dump = Ws::new(&base, "").built().dump("/opt/owned");
    assert!(dump.contains("Uid: 4294967295 "), "{dump}");
}

#[test]
fn unknown_entry_types_are_named_by_type_byte() {
    let base = with_entries(|t| {
        append_raw(
            t,
            &Raw {
                kind: EntryType::new(b'Z'),
                ..Raw::file("opt/odd", b"")
            },
        )
    });
    let e = Ws::new(&base, "").refused();
    assert!(e.contains("opt/odd") && e.contains("'Z'"), "{e}");
}

#[test]
fn disk_sizes_are_checked_not_wrapped() {
    let ws = Ws::new(&finish(base_entries()), "");
    for (disk, key) in [
        ("espSize: 2TiB\n  rootSize: 8MiB", "disk.espSize"),
        ("espSize: 32MiB\n  rootSize: 8MiB", "disk.espSize"),
        (
            "rootSize: 8MiB\n  stateSize: 18446744073709551104",
            "disk.stateSize",
        ),
        (
            "rootSize: 8MiB\n  stateSize: 257MiB\n  espSize: 100000000",
            "disk.espSize",
        ),
        ("rootSize: 17TiB", "disk.rootSize"),
        ("rootSize: 8MiB\n  stateSize: 255MiB", "disk.stateSize"),
    ] {
        ws.definition(&format!("disk:\n  {disk}\n"));
        let e = ws.refused();
        assert!(e.contains("image.yaml:") && e.contains(key), "{disk}: {e}");
        assert!(!ws.out().exists());
    }
}

#[test]
fn overlay_target_symlink_or_file_is_refused_and_nothing_is_followed() {
    let base = with_entries(|t| {
        append_raw(
            t,
            &Raw {
                kind: EntryType::Symlink,
                link: b"passwd",
                ..Raw::file("etc/alias", b"")
            },
        )
    });
    for (target, needle) in [
        ("/etc/alias", "symbolic link to passwd"),
        ("/etc/passwd", "not a directory"),
    ] {
        let ws = Ws::new(
            &base,
            &format!("overlays:\n  - source: overlay\n    target: {target}\n"),
        );
        let e = ws.refused();
        assert!(e.contains(target) && e.contains(needle), "{target}: {e}");
    }
    // An overlay directory that a symlink in the base would redirect onto a file.
    let ws = Ws::new(&base, "");
    fs::create_dir_all(ws.path().join("overlay/etc/alias")).unwrap();
    fs::write(ws.path().join("overlay/etc/alias/x"), b"x").unwrap();
    let e = ws.refused();
    assert!(
        e.contains("/etc/alias") && e.contains("not a directory"),
        "{e}"
    );
}

// --- outputs never escape or mismatch -------------------------------------------------------

#[test]
fn outputs_are_exclusive_locked_and_stale_partials_removed() {
    let ws = Ws::new(&finish(base_entries()), "");
    fs::create_dir_all(ws.out()).unwrap();
    // A symlink planted under a temporary's name, pointing outside the output directory,
    // and a killed build's partial image.
    let victim = ws.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let planted = ws.out().join(format!(".{STEM}.manifest.json.tmp-1"));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let stale = ws.out().join(format!(".{STEM}.raw.partial-1"));
    fs::write(&stale, vec![0u8; 1 << 20]).unwrap();
    let b = ws.built();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&planted).is_err(), "planted link kept");
    assert!(!stale.exists(), "stale partial kept");
    let names: Vec<String> = fs::read_dir(ws.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            format!(".{STEM}.lock"),
            format!("{STEM}.manifest.json"),
            format!("{STEM}.raw"),
            format!("{STEM}.spdx.json")
        ]
    );
    let report = b.inspect();
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // A concurrent build of the same output is refused while the lock is held.
    let held = publish::Outputs::begin(&ws.out(), STEM).unwrap();
    let out = ws.build();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another build of"),
        "{err}"
    );
    drop(held);

    // The output path a file, not a directory: said so.
    let file_out = ws.path().join("file-out");
    fs::write(&file_out, b"").unwrap();
    let e = publish::Outputs::begin(&file_out, STEM)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
}

/// A failure between removing the old manifest and renaming the image (injected: the image's
/// final name becomes a non-empty directory) never leaves a manifest beside another build's
/// image.
#[test]
fn publish_failure_never_pairs_a_manifest_with_another_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let old = publish::Outputs::begin(out, "x-1").unwrap();
    old.file().write_all_at(b"old image", 0).unwrap();
    old.publish(b"{\"old\":1}").unwrap();
    let new = publish::Outputs::begin(out, "x-1").unwrap();
    new.file().write_all_at(b"new image", 0).unwrap();
    fs::remove_file(out.join("x-1.raw")).unwrap();
    fs::create_dir_all(out.join("x-1.raw/blocker")).unwrap();
    assert!(new.publish(b"{\"new\":1}").is_err());
    assert!(
        !out.join("x-1.manifest.json").exists(),
        "a manifest survived without its image"
    );
    let partials = fs::read_dir(out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(partials, 0);
    // A killed build (temporary left, lock released by the kernel) is cleaned by the next.
    fs::remove_dir_all(out.join("x-1.raw")).unwrap();
    let leftover = out.join(".x-1.raw.partial-12345");
    fs::write(&leftover, b"killed").unwrap();
    let next = publish::Outputs::begin(out, "x-1").unwrap();
    assert!(!leftover.exists());
    next.publish(b"{}").unwrap();
    assert_eq!(fs::read(out.join("x-1.manifest.json")).unwrap(), b"{}");
}

// --- unbounded resources ---------------------------------------------------------------------

#[test]
fn oversized_base_files_are_refused_by_limit_not_read() {
    // 64 MiB of os-release (Debian's etc/os-release links to it): compresses to a few KB and
    // would be read whole without the limit.
    let big = vec![b'#'; 64 << 20];
    let base = with_entries(|t| {
        append_raw(t, &Raw::file("usr/lib/os-release", &big));
        append_raw(
            t,
            &Raw {
                kind: EntryType::Symlink,
                link: b"../usr/lib/os-release",
                ..Raw::file("etc/os-release", b"")
            },
        );
    });
    let ws = Ws::new(&[], "base:\n  archive: base.tar.zst\n");
    fs::write(
        ws.path().join("base.tar.zst"),
        zstd::encode_all(&base[..], 1).unwrap(),
    )
    .unwrap();
    let e = ws.refused();
    assert!(
        e.contains("/usr/lib/os-release") && e.contains("limit for os-release"),
        "{e}"
    );
}

#[test]
fn definition_must_be_a_bounded_regular_file() {
    let exe = env!("CARGO_BIN_EXE_rke2-image");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, needle) in [
        (Path::new("/dev/zero"), "is a device"),
        (fifo.as_path(), "is a FIFO"),
        (dir.path(), "is a directory"),
    ] {
        let start = Instant::now();
        let out = Command::new(exe).arg("build").arg(path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{err}");
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    let big = dir.path().join("big.yaml");
    fs::write(&big, vec![b'#'; (1 << 20) + 1]).unwrap();
    let out = Command::new(exe).arg("build").arg(&big).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("big.yaml") && err.contains("limit"), "{err}");
}

#[test]
fn mode_globs_match_without_backtracking() {
    let ws = Ws::new(
        &finish(base_entries()),
        "overlays:\n  - source: overlay\n    modes:\n      \"opt/*a*a*a*a*a*a*a*a*a*a*a*a*b\": \"0600\"\n      \"**/**/**/**/**/**/**/app.conf\": \"0640\"\n",
    );
    fs::create_dir_all(ws.path().join("overlay/opt")).unwrap();
    fs::write(ws.path().join("overlay/opt").join("a".repeat(100)), b"x").unwrap();
    fs::write(
        ws.path()
            .join("overlay/opt")
            .join(format!("{}b", "a".repeat(30))),
        b"y",
    )
    .unwrap();
    let start = Instant::now();
    let b = ws.built();
    assert!(start.elapsed() < Duration::from_secs(60));
    let d = b.dump(&format!("/opt/{}b", "a".repeat(30)));
    assert!(d.contains("Access: 0600/"), "{d}");
    let d = b.dump("/etc/app/app.conf");
    assert!(d.contains("Access: 0640/"), "{d}");
}

// --- errors found early, named clearly --------------------------------------------------------

#[test]
fn checks_that_need_no_base_run_at_load() {
    let ws = Ws::new(b"not even an archive", "");
    for (yaml, key) in [
        ("name: Node\n", "name"),
        ("version: 1.31.5+rke2r1\n", "version"),
        ("epoch: 99999999999\n", "epoch"),
        (
            "disk:\n  rootSize: 8MiB\n  stateSize: 300000000\n",
            "disk.stateSize",
        ),
        ("disk:\n  rootSize: [1]\n", "disk.rootSize"),
    ] {
        let text = fs::read_to_string(ws.def()).unwrap();
        let field = yaml.split(':').next().unwrap();
        let mut t: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{field}:")))
            .filter(|l| !(field == "disk" && (l.starts_with("  ") && l.contains("Size"))))
            .map(|l| format!("{l}\n"))
            .collect();
        t.push_str(yaml);
        fs::write(ws.def(), t).unwrap();
        let e = ws.refused();
        assert!(
            e.contains("image.yaml:") && e.contains(&format!(": {key}: ")),
            "{yaml}: {e}"
        );
        // The base (not an archive) was never opened.
        assert!(!e.contains("not a tar"), "{e}");
        ws.definition("");
    }
    let ws = Ws::new(&finish(base_entries()), "");
    let out = Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .arg("build")
        .arg(ws.def())
        .env("SOURCE_DATE_EPOCH", "5000000000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SOURCE_DATE_EPOCH") && err.contains("2106"),
        "{err}"
    );
}

#[test]
fn base_entry_after_2106_without_epoch_is_refused_with_the_fix() {
    let base = with_entries(|t| {
        append_raw(
            t,
            &Raw {
                mtime: 5_000_000_000,
                ..Raw::file("opt/future", b"x")
            },
        )
    });
    let ws = Ws::new(&base, "");
    // No `epoch:` line at all.
    let text: String = fs::read_to_string(ws.def())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("epoch"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(ws.def(), text).unwrap();
    let e = ws.refused();
    assert!(
        e.contains("/opt/future") && e.contains("2106") && e.contains("`epoch:`"),
        "{e}"
    );
    // With an epoch the same base builds; the timestamp is clamped.
    ws.definition("");
    let d = ws.built().dump("/opt/future");
    assert!(d.contains("Timestamp: 2023-11-14 22:13:20"), "{d}");
}

// --- accepted definitions give the image they describe -----------------------------------------

#[test]
fn accepted_definition_is_what_the_image_holds() {
    let ws = Ws::new(
        &finish(base_entries()),
        "description: \"Edge node (lab)\"\nkernel:\n  cmdline:\n    - console=ttyS0,115200\n    - 'dyndbg=\"file drivers/* +p\"'\n    - rke2.config.url=http://10.0.0.1/x\noverlays:\n  - source: overlay\n    owner: \"1000:1001\"\n    target: /srv\n",
    );
    let b = ws.built();
    let report = b.inspect();
    let text = report.to_string();
    let entry = &report["entries"][0];
    let options = entry["options"]
        .as_str()
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        options.ends_with(
            "console=ttyS0,115200 dyndbg=\"file drivers/* +p\" rke2.config.url=http://10.0.0.1/x"
        ),
        "{options}"
    );
    assert_eq!(
        rke2_image_contract::cmdline::get(options, "dyndbg"),
        Some("file drivers/* +p")
    );
    assert_eq!(
        rke2_image_contract::cmdline::get(options, "enforcing"),
        None
    );
    assert_eq!(
        rke2_image_contract::cmdline::get(options, "fips"),
        Some("1")
    );
    assert!(
        entry["title"]
            .as_str()
            .unwrap()
            .starts_with("Edge node (lab)"),
        "{text}"
    );
    let root = b.extract();
    assert_eq!(
        fs::read(root.join("srv/etc/app/app.conf")).unwrap(),
        b"setting = 1\n"
    );
    let d = b.dump("/srv/etc/app/app.conf");
    assert!(d.contains("Uid: 1000 ") && d.contains("Gid: 1001 "), "{d}");
}
