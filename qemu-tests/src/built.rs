//! Test images built by the real pipeline: `rke2-image build` on a definition that layers the
//! test-only probe overlay over the production overlays.

use anyhow::{bail, Context, Result};
use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::partitions;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A built image and what a direct kernel boot of it needs (read back from its ESP).
#[derive(Debug, Clone)]
pub struct Image {
    pub disk: PathBuf,
    /// The qcow2 output of the same build, when it was asked for ([`build_formats`]).
    pub qcow2: Option<PathBuf>,
    /// The iso output of the same build, when it was asked for.
    pub iso: Option<PathBuf>,
    /// The pxe output directory of the same build, when it was asked for.
    pub pxe: Option<PathBuf>,
    pub manifest: Manifest,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Byte range of the root partition (root-a) inside the disk.
    pub root_part: (u64, u64),
}

/// The workspace root (this crate lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command; a failure carries its status and stderr. Returns its stdout.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Builds the test image with `<programs>/rke2-image` (and its `rke2-init`, `rke2-firstboot`)
/// from `base` into `work`; `extra` is appended to the definition (e.g. an `rke2:` section).
pub fn build(base: &Path, programs: &Path, work: &Path, extra: &str) -> Result<Image> {
    build_formats(base, programs, work, extra, "raw")
}

/// [`build`] publishing `formats` (`build --format`, which must include `raw`): one build
/// gives every output a suite boots.
pub fn build_formats(
    base: &Path,
    programs: &Path,
    work: &Path,
    extra: &str,
    formats: &str,
) -> Result<Image> {
    let def = Variant::default();
    let published = build_published(base, programs, work, &def, extra, formats)?;
    image_from(work, &def, &published)
}

/// What sets one test image apart from the default: its `name:` and `version:`, and overlays
/// layered over the probe's (e.g. a drop-in that breaks a unit).
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub version: String,
    pub overlays: Vec<PathBuf>,
}

impl Default for Variant {
    fn default() -> Variant {
        Variant {
            name: "qemu-test".into(),
            version: "1".into(),
            overlays: Vec::new(),
        }
    }
}

/// Runs `rke2-image build --format formats` on the test definition of `variant` (with `extra`
/// appended) in `work`; returns the published outputs (one per line of the build's stdout).
pub fn build_published(
    base: &Path,
    programs: &Path,
    work: &Path,
    variant: &Variant,
    extra: &str,
    formats: &str,
) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(work)?;
    let ws = workspace();
    let def = work.join("test-image.yaml");
    let mut overlays = String::new();
    for o in [
        ws.join("overlays/base"),
        ws.join("overlays/firstboot"),
        ws.join("overlays/qemu-test"),
    ]
    .iter()
    .chain(&variant.overlays)
    {
        overlays.push_str(&format!("  - source: {}\n", o.display()));
    }
    fs::write(
        &def,
        format!(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: {}\nversion: \"{}\"\nepoch: 1767225600\nbase:\n  archive: {}\noverlays:\n{overlays}kernel:\n  cmdline:\n    - console=ttyS0,115200\ninitrd:\n  init: {}\noutput:\n  directory: {}\n{extra}",
            variant.name,
            variant.version,
            base.display(),
            programs.join("rke2-init").display(),
            work.join("out").display()
        ),
    )?;
    let out = run(Command::new(programs.join("rke2-image"))
        .arg("build")
        .arg(&def)
        .args(["--format", formats])
        .env_remove("SOURCE_DATE_EPOCH"))?;
    rke2_testsupport::scratch::remove_at_exit(work.join("out"));
    // One published output per line.
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(PathBuf::from)
        .collect())
}

/// The published output with extension `ext`, if any.
pub fn published_with(published: &[PathBuf], ext: &str) -> Option<PathBuf> {
    published
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .cloned()
}

/// The [`Image`] of a build that published a raw disk.
pub fn image_from(work: &Path, variant: &Variant, published: &[PathBuf]) -> Result<Image> {
    let with_ext = |e: &str| published_with(published, e);
    let disk = with_ext("raw").context("the build published no .raw (--format must list raw)")?;
    let qcow2 = with_ext("qcow2");
    let iso = with_ext("iso");
    let pxe = with_ext("pxe");
    let manifest: Manifest = serde_json::from_slice(&fs::read(work.join(format!(
        "out/{}-{}.manifest.json",
        variant.name, variant.version
    )))?)?;
    let part = |label: &str| -> Result<(u64, u64)> {
        let p = manifest
            .disk
            .partitions
            .iter()
            .find(|p| p.label == label)
            .with_context(|| format!("no {label} partition"))?;
        Ok((
            p.first_lba * partitions::SECTOR,
            (p.last_lba + 1) * partitions::SECTOR,
        ))
    };
    // Kernel and initrd for direct boots: copied off the image's own ESP with mtools, then out
    // of its unified kernel image's .linux and .initrd sections with binutils.
    let (esp_start, _) = part("esp")?;
    let img = format!("{}@@{}", disk.display(), esp_start);
    let uki = work.join("uki.efi");
    let kernel = work.join("vmlinuz");
    let initrd = work.join("initrd.zst");
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i", &img])
        .arg(format!("::/{}", manifest.boot.entry))
        .arg(&uki))?;
    run(Command::new("objcopy")
        .arg(format!("--dump-section=.linux={}", kernel.display()))
        .arg(format!("--dump-section=.initrd={}", initrd.display()))
        .arg(&uki)
        .arg(work.join("uki.scratch")))?;
    // The image and what was copied off it live as long as this test process (every run
    // builds afresh); the definition and logs stay for a look after a failure.
    for p in [
        uki,
        kernel.clone(),
        initrd.clone(),
        work.join("uki.scratch"),
    ] {
        rke2_testsupport::scratch::remove_at_exit(p);
    }
    Ok(Image {
        disk,
        qcow2,
        iso,
        pxe,
        kernel,
        initrd,
        cmdline: manifest.boot.cmdline.clone(),
        root_part: part("root-a")?,
        manifest,
    })
}

/// A copy-on-write disk for one VM: a qcow2 overlay at `dst` (name it `*.qcow2`) over the
/// built image `src` (raw, or the qcow2 output), which stays untouched, optionally grown to `size` bytes (a larger disk).
/// Only what the guest writes takes space — a copy of the image per VM filled CI's disk.
pub fn overlay_disk(src: &Path, dst: &Path, size: Option<u64>) -> Result<()> {
    let src = fs::canonicalize(src).with_context(|| format!("{}", src.display()))?;
    let _ = fs::remove_file(dst);
    let mut c = Command::new("qemu-img");
    c.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        crate::vm::disk_format(&src),
        "-b",
    ])
    .arg(&src)
    .arg(dst);
    if let Some(s) = size {
        c.arg(s.to_string());
    }
    run(&mut c)?;
    Ok(())
}

/// A sparse copy of `src` at `dst`, optionally grown to `size` bytes (a larger disk): for the
/// tests that change the image's bytes or read the disk back with sgdisk/e2fsprogs.
pub fn copy_disk(src: &Path, dst: &Path, size: Option<u64>) -> Result<()> {
    run(Command::new("cp")
        .args(["--sparse=always"])
        .arg(src)
        .arg(dst))?;
    if let Some(s) = size {
        fs::OpenOptions::new().write(true).open(dst)?.set_len(s)?;
    }
    Ok(())
}
