//! Hand-made test disks: a Debian base as a verity-protected EROFS root, an initrd holding
//! `rke2-init` and the module closure, and an ESP with systemd-boot, laid out as in
//! `contract::partitions`. Built with the reference tools, not with our own writers, so the
//! boot tests exercise `rke2-init` independently of the image pipeline.

use anyhow::{bail, Context, Result};
use rke2_image_contract::{cmdline as keys, partitions, paths};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules the initrd loads (with their dependencies) to reach the root on a virtio disk.
pub const INITRD_MODULES: [&str; 8] = [
    "virtio_pci",
    "virtio_blk",
    "dm-verity",
    "erofs",
    "ext4",
    "overlay",
    "crc32c_generic",
    // Built into the Debian kernel: exercises rke2-init's modules.builtin handling.
    "sha256_generic",
];

/// A hand-made disk and what is needed to boot it directly.
#[derive(Debug, Clone)]
pub struct Image {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub root_hash: String,
    /// Byte range of the root partition (root-a) inside the disk.
    pub root_part: (u64, u64),
    pub initrd_size: u64,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(script: &str) -> Result<String> {
    run(Command::new("sh").args(["-euc", script]))
}

const MIB: u64 = 1 << 20;

fn align(n: u64) -> u64 {
    n.div_ceil(MIB) * MIB
}

/// The workspace root (this crate lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the static `rke2-init` (the documented command) unless `RKE2_INIT_BIN` names one.
pub fn rke2_init_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("RKE2_INIT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(workspace()).args([
        "rustc",
        "-q",
        "-p",
        "rke2-firstboot",
        "--bin",
        "rke2-init",
        "--release",
        "--",
        "-C",
        "target-feature=+crt-static",
    ]))?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let bin = target.join("release/rke2-init");
    let file = run(Command::new("file").arg(&bin))?;
    if !file.contains("statically linked") && !file.contains("static-pie linked") {
        bail!("{} is not static: {file}", bin.display());
    }
    Ok(bin)
}

/// Extracts the base tarball once into `work/root` (reused while the tarball is unchanged).
fn extract_base(base: &Path, work: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(base).with_context(|| format!("RKE2_TEST_BASE {}", base.display()))?;
    let key = format!(
        "{}-{}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let root = work.join(format!("root-{key}"));
    if !root.join(".extracted").exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        run(Command::new("tar")
            .args(["--zstd", "-xpf"])
            .arg(base)
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&root))?;
        fs::write(root.join(".extracted"), "")?;
    }
    Ok(root)
}

/// Builds the disk (into `work`) from a Debian base tarball with the `overlays/qemu-test`
/// overlay, the labels file for the state directories, and `init_bin` as PID 1 of the initrd.
pub fn build(base: &Path, work: &Path, init_bin: &Path) -> Result<Image> {
    fs::create_dir_all(work)?;
    let root = extract_base(base, work)?;
    let _ = fs::remove_file(root.join(".extracted"));
    let overlay = workspace().join("overlays/qemu-test");
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", overlay.display()))
        .arg(&root))?;
    let fc = root.join("etc/selinux/default/contexts/files/file_contexts");
    // Labels for the state directories, from the base's own policy (matchpathcon as oracle).
    let mut labels = String::new();
    for (rel, path) in paths::STATE_DIRS {
        let ctx = run(Command::new("matchpathcon")
            .arg("-n")
            .arg("-f")
            .arg(&fc)
            .arg(path))?;
        labels.push_str(&format!("{rel} {}\n", ctx.trim()));
    }
    let lp = root.join(paths::STATE_LABELS);
    fs::create_dir_all(lp.parent().context("labels path")?)?;
    fs::write(&lp, labels)?;
    let kver = fs::read_dir(root.join("lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .context("no kernel in lib/modules of the base")?;

    let erofs = work.join("root.erofs");
    let _ = fs::remove_file(&erofs);
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(format!("--file-contexts={}", fc.display()))
        .arg(&erofs)
        .arg(&root))?;
    fs::write(root.join(".extracted"), "")?;
    let hash = work.join("root.verity");
    let _ = fs::remove_file(&hash);
    let out = run(Command::new("veritysetup")
        .arg("format")
        .arg(&erofs)
        .arg(&hash))?;
    let root_hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .context("veritysetup printed no root hash")?
        .trim()
        .to_string();

    // initrd: rke2-init, the module closure (modprobe --show-depends as the oracle for
    // what is needed), filtered module indexes, the load list.
    let st = work.join("initrd-staging");
    let _ = fs::remove_dir_all(&st);
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc/rke2-init"] {
        fs::create_dir_all(st.join(d))?;
    }
    fs::copy(init_bin, st.join(paths::INITRD_INIT))?;
    run(Command::new("mknod")
        .arg(st.join("dev/console"))
        .args(["c", "5", "1"]))?;
    let moddir = root.join("lib/modules").join(&kver);
    let mut closure = std::collections::BTreeSet::new();
    for m in INITRD_MODULES {
        let deps = run(Command::new("modprobe").arg("-d").arg(&root).args([
            "-S",
            &kver,
            "--show-depends",
            m,
        ]))?;
        for l in deps.lines() {
            if let Some(p) = l.strip_prefix("insmod ") {
                let p = p.trim();
                let rel = p
                    .strip_prefix(&format!("{}/", moddir.display()))
                    .unwrap_or(p);
                closure.insert(rel.to_string());
            }
        }
    }
    let idir = st.join(paths::INITRD_MODULES).join(&kver);
    for rel in &closure {
        let dst = idir.join(rel);
        fs::create_dir_all(dst.parent().context("module path")?)?;
        fs::copy(moddir.join(rel), &dst)?;
    }
    let names: std::collections::BTreeSet<String> = closure
        .iter()
        .map(|p| {
            p.rsplit('/')
                .next()
                .unwrap_or(p)
                .trim_end_matches(".ko")
                .replace('-', "_")
        })
        .collect();
    let dep = fs::read_to_string(moddir.join("modules.dep"))?;
    let dep: String = dep
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|m| closure.contains(m)))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(idir.join("modules.dep"), dep)?;
    fs::copy(moddir.join("modules.softdep"), idir.join("modules.softdep"))?;
    fs::copy(moddir.join("modules.builtin"), idir.join("modules.builtin"))?;
    let alias = fs::read_to_string(moddir.join("modules.alias"))?;
    let alias: String = alias
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|m| names.contains(m))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(idir.join("modules.alias"), alias)?;
    fs::write(
        st.join(paths::INITRD_MODULE_LIST),
        INITRD_MODULES.join("\n") + "\n",
    )?;
    let initrd = work.join("initrd.img");
    sh(&format!(
        "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -19 -f -o '{}'",
        st.display(),
        initrd.display()
    ))?;
    let kernel = work.join("vmlinuz");
    fs::copy(root.join(format!("boot/vmlinuz-{kver}")), &kernel)?;

    let cmdline = format!(
        "console=ttyS0,115200 {}={root_hash} {}=a rke2.device_timeout=30 fips=1 security=selinux selinux=1 enforcing=1",
        keys::ROOT_HASH,
        keys::SLOT
    );

    // ESP: systemd-boot from the base, kernel, initrd, one Boot Loader Spec entry.
    let esp = work.join("esp.img");
    let _ = fs::remove_file(&esp);
    let esp_size = 64 * MIB;
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", partitions::ESP_FS_LABEL, "-C"])
        .arg(&esp)
        .arg((esp_size / 1024).to_string()))?;
    let loader = work.join("loader.conf");
    fs::write(&loader, "timeout 0\ndefault rke2-test.conf\n")?;
    let entry = work.join("rke2-test.conf");
    fs::write(
        &entry,
        format!("title rke2 test\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n"),
    )?;
    let mtools = |args: &[&str]| -> Result<String> {
        run(Command::new(args[0]).arg("-i").arg(&esp).args(&args[1..]))
    };
    mtools(&[
        "mmd",
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
    ])?;
    let sdboot = root.join(paths::SYSTEMD_BOOT_EFI);
    for (src, dst) in [
        (sdboot.as_path(), format!("::/{}", paths::ESP_FALLBACK_BOOT)),
        (kernel.as_path(), "::/vmlinuz".to_string()),
        (initrd.as_path(), "::/initrd.img".to_string()),
        (loader.as_path(), format!("::/{}", paths::ESP_LOADER_CONF)),
        (
            entry.as_path(),
            format!("::/{}/rke2-test.conf", paths::ESP_ENTRIES_DIR),
        ),
    ] {
        run(Command::new("mcopy").arg("-i").arg(&esp).arg(src).arg(dst))?;
    }

    // Disk: GPT written by sgdisk with the contract's labels and types.
    let sizes = [
        esp_size,
        align(fs::metadata(&erofs)?.len()),
        align(fs::metadata(&hash)?.len()),
        MIB,
        MIB,
    ];
    let total = MIB + sizes.iter().sum::<u64>() + MIB;
    let disk = work.join("disk.raw");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)?.set_len(total)?;
    let mut sg = Command::new("sgdisk");
    sg.arg("-o");
    let mut offset = MIB;
    let mut ranges = Vec::new();
    for (spec, size) in partitions::BUILT.iter().zip(sizes) {
        let (first, last) = (offset / 512, (offset + size) / 512 - 1);
        sg.arg(format!("-n{}:{first}:{last}", spec.number));
        sg.arg(format!("-t{}:{}", spec.number, spec.type_guid));
        sg.arg(format!("-c{}:{}", spec.number, spec.label));
        ranges.push((offset, offset + size));
        offset += size;
    }
    run(sg.arg(&disk))?;
    let mut f = fs::OpenOptions::new().write(true).open(&disk)?;
    for (src, range) in [(&esp, ranges[0]), (&erofs, ranges[1]), (&hash, ranges[2])] {
        f.seek(SeekFrom::Start(range.0))?;
        f.write_all(&fs::read(src)?)?;
    }
    f.sync_all()?;
    let initrd_size = fs::metadata(&initrd)?.len();
    Ok(Image {
        disk,
        kernel,
        initrd,
        cmdline,
        root_hash,
        root_part: ranges[1],
        initrd_size,
    })
}

/// A sparse copy of `src` at `dst`, optionally grown to `size` bytes.
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
