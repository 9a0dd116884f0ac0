//! The `iso` output: `<stem>.iso`, a hybrid image for a live boot under UEFI, from a (virtual)
//! CD/DVD drive or written with `dd` to a disk or USB stick.
//!
//! | where                          | what                                                         |
//! |--------------------------------|--------------------------------------------------------------|
//! | `/rke2/root.img`               | the EROFS root (the raw image's root-a region, as written)   |
//! | `/rke2/verity.img`             | its dm-verity hash device (superblock + tree)                |
//! | `/rke2/manifest.json` (+`.sig`)| the embedded manifest, as on the disk image's ESP            |
//! | `/rke2/head.img`               | the raw image's bytes before its first partition: protective |
//! |                                | MBR + primary GPT (the installer resizes and writes it)      |
//! | `/rke2/esp.img`                | the raw image's ESP partition up to its last non-zero 2 KiB  |
//! |                                | block (disk UKIs; the installer zeroes the rest)             |
//! | `/rke2/config.img`             | the embed area: 1 MiB, "empty" header + zeros; `iso          |
//! |                                | customize` writes a configuration into a copy (`embed.rs`)   |
//! | appended partition 2 (`0xef`)  | a FAT32 ESP: systemd-boot, `loader.conf`, the live UKI, and  |
//! |                                | the `install` loader entry (live UKI + `rke2.install`)       |
//!
//! With `head.img`, `esp.img`, `root.img` and `verity.img` the installer
//! (`rke2_firstboot::install::write`) reproduces the raw image on a disk: the same GPT (moved to
//! the disk's end), the same ESP, root-a and root-a-verity bytes; root-b stays empty as on a
//! raw image. All four are cut out of the finished raw temporary by offset, so they are the raw
//! image's bytes by construction (`builder/tests/iso.rs` compares them).
//!
//! The `install` entry (`loader/entries/install.conf`, a Boot Loader Specification type #1
//! entry) starts the live UKI with its command line plus a bare `rke2.install` (install onto the
//! configuration's `install.target`). Its id does not match `loader.conf`'s `default <name>-*`,
//! so the default stays the live boot; the operator picks it in the menu. systemd-stub ignores a
//! boot loader's command line when Secure Boot is on: signed ISOs install through the
//! configuration's `install:` section instead (documented limitation).
//!
//! The ESP is appended after the ISO 9660 volume and published twice by xorriso: as the El
//! Torito EFI boot image (a CD boot; its load size is recorded as 0, "to the end of the
//! medium", because a FAT32 volume is larger than El Torito's 32 MiB field) and as a GPT
//! partition (a disk boot). The live UKI is the disk's kernel and initrd with the disk UKI's
//! command line plus `rke2.root=iso`, signed like it when Secure Boot keys are given; the
//! disk image's own ESP is unchanged, so selecting `iso` does not change the raw image's bytes.
//! `rke2-init` finds the two files by reading the ISO 9660 directory on every whole block
//! device and maps their extents with dm-linear under dm-verity (`firstboot/src/init/iso9660.rs`).
//!
//! Reproducible: `SOURCE_DATE_EPOCH` (volume dates and UUID), the GPT disk GUID from the build
//! seed, every file date set to the build epoch, `-r` (owner 0, normalised modes), a volume id from the image name;
//! no host path reaches the image (the root and verity bytes are cut out of the raw temporary
//! by offset). xorriso's version is Debian bookworm's 1.5.4 (scripts/host-packages).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_image_contract::{cmdline, embed, paths};

use crate::esp::EspContent;
use crate::fat;
use crate::pipeline::{invalid, stage, BuildError};
use crate::publish::Outputs;
use crate::tree::{Blob, Tree};

/// File name suffix of the output.
pub const SUFFIX: &str = "iso";
/// Where the live UKI is on the ISO's ESP (systemd-boot's `default <name>-*` matches it).
pub fn uki_path(name: &str, version: &str) -> String {
    format!("EFI/Linux/{name}-{version}-live.efi")
}

/// The live UKI's command line: the disk UKI's, then the root source.
pub fn kernel_args(uki_cmdline: &str) -> String {
    format!(
        "{uki_cmdline} {}={}",
        cmdline::ROOT_SOURCE,
        cmdline::ROOT_ISO
    )
}

/// ISO 9660 volume id (d-characters, at most 32): the image name in upper case, other
/// characters as `_`.
pub fn volume_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect()
}

/// What the emitter reads.
pub(crate) struct Pieces<'a> {
    /// The finished raw temporary (root and verity are cut out of it).
    pub raw: &'a Path,
    /// (offset, length) of the EROFS root in `raw`.
    pub root: (u64, u64),
    /// (offset, length) of the verity hash device in `raw`.
    pub verity: (u64, u64),
    /// Bytes of `raw` before the first partition (protective MBR + primary GPT).
    pub head: u64,
    /// (offset, length) of the ESP partition in `raw`.
    pub disk_esp: (u64, u64),
    /// The ISO's ESP files (see [`esp_files`]).
    pub esp: Vec<(String, Blob)>,
    /// More files on the ISO 9660 side: (absolute path there, content).
    pub extra: Vec<(String, Blob)>,
    pub name: &'a str,
    pub epoch: u64,
    /// The FAT volume id of the ISO's ESP.
    pub esp_volume_id: u32,
    /// The GPT disk GUID (on-disk bytes); xorriso derives the partitions' GUIDs from it.
    pub gpt_guid: [u8; 16],
}

/// The GPT disk GUID in xorriso's notation (32 hex digits, on-disk byte order), marked as a
/// random (version 4, RFC 4122 variant) GUID: it derives from the build seed, so ISOs of
/// different images differ and two builds of one image agree.
pub fn gpt_guid_hex(seed16: [u8; 16]) -> String {
    let mut g = seed16;
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    hex::encode(g)
}

/// Bytes of `len` at `offset` of `f` up to the end of the last 2048-byte block that is not all
/// zeros: the ESP's free clusters are zeros in the raw image, so the ISO carries only its used
/// head (the installer zeroes the rest of the partition).
pub fn used_len(f: &File, offset: u64, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const BLK: u64 = 2048;
    let mut buf = vec![0u8; 1 << 20];
    let mut end = len - len % BLK;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.read_exact_at(&mut buf[..n], offset + start)?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b != 0) {
            return Ok(start + (i as u64 / BLK + 1) * BLK);
        }
        end = start;
    }
    Ok(0)
}

/// Where the install entry is on the ISO's ESP.
pub const INSTALL_ENTRY: &str = "loader/entries/install.conf";

/// The install entry: the live UKI (`uki_path`, ESP-relative) started with `live_cmdline` plus a
/// bare `rke2.install`.
pub fn install_entry(name: &str, version: &str, uki_path: &str, live_cmdline: &str) -> String {
    format!(
        "title {name} {version} (install onto disk)\nversion {version}\nefi /{uki_path}\n\
         options {live_cmdline} {}\n",
        cmdline::INSTALL
    )
}

/// The ISO's ESP: the disk ESP's systemd-boot and `loader.conf` (already signed when Secure
/// Boot is on), the live UKI and the install entry (see [`install_entry`]). Boot counting and
/// the manifest stay off the read-only medium.
pub(crate) fn esp_files(
    disk_esp: &EspContent,
    uki_path: &str,
    uki: Vec<u8>,
    install_entry: String,
) -> Result<Vec<(String, Blob)>, BuildError> {
    let mut out = Vec::new();
    for p in [
        paths::ESP_FALLBACK_BOOT,
        paths::ESP_SYSTEMD_BOOT,
        paths::ESP_LOADER_CONF,
    ] {
        let blob = disk_esp
            .files
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| invalid("iso", format!("the disk's ESP has no {p}")))?;
        out.push((p.to_string(), blob));
    }
    out.push((uki_path.to_string(), Blob::bytes(uki)));
    out.push((
        INSTALL_ENTRY.to_string(),
        Blob::bytes(install_entry.into_bytes()),
    ));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BuildError {
    move |e| invalid("iso", format!("{what}: {}", crate::limits::io_reason(&e)))
}

/// Writes `blob` to a new file at `path` with its mtime at `epoch`.
fn write_blob(path: &Path, blob: &Blob, epoch: u64) -> Result<(), BuildError> {
    let mut f = File::create(path).map_err(stage("iso"))?;
    Tree::read_blobs(&[(0usize, blob)], &mut |_, r| {
        std::io::copy(r, &mut f).map(|_| ())
    })
    .map_err(stage("iso"))?;
    f.flush().map_err(stage("iso"))?;
    set_mtime(&f, epoch)
}

fn set_mtime(f: &File, epoch: u64) -> Result<(), BuildError> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(stage("iso"))
}

/// The xorriso arguments (after the program name) that write `out` from the pieces and the
/// work directory `work` (holding `tree/` and `esp.img`).
fn xorriso_args(p: &Pieces, out: &Path, work: &Path) -> Vec<std::ffi::OsString> {
    let volid = volume_id(p.name);
    let gpt_guid = gpt_guid_hex(p.gpt_guid);
    let epoch = p.epoch;
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    let s = |v: &str| std::ffi::OsString::from(v);
    // -no_rc first: no startup files of the build host.
    for v in ["-no_rc", "-report_about", "SORRY", "-as", "mkisofs", "-o"] {
        a.push(s(v));
    }
    a.push(out.into());
    for v in [
        "-V",
        &volid,
        "-iso-level",
        "3",
        "-r",
        // The ISO 9660 volume also as GPT partition 1, mountable from a disk.
        "-partition_offset",
        "16",
        "-append_partition",
        "2",
        "0xef",
    ] {
        a.push(s(v));
    }
    a.push(work.join("esp.img").into());
    for v in [
        "-appended_part_as_gpt",
        "-e",
        "--interval:appended_partition_2:all::",
        "-no-emul-boot",
    ] {
        a.push(s(v));
    }
    a.push(work.join("tree").into());
    // Back to xorriso's own commands: the root and its hash device cut out of the raw image.
    a.push(s("--"));
    for ((offset, len), path) in [
        (p.root, cmdline::ISO_ROOT_FILE),
        (p.verity, cmdline::ISO_VERITY_FILE),
        ((0, p.head), cmdline::ISO_HEAD_FILE),
        (p.disk_esp, cmdline::ISO_ESP_FILE),
    ] {
        a.push(s("-cut_out"));
        a.push(p.raw.into());
        a.push(s(&offset.to_string()));
        a.push(s(&len.to_string()));
        a.push(s(path));
    }
    for v in [
        "-volume_date",
        "all_file_dates",
        &format!("={epoch}"),
        "-boot_image",
        "any",
        &format!("gpt_disk_guid={gpt_guid}"),
    ] {
        a.push(s(v));
    }
    a
}

/// Writes the staged `<stem>.iso`; returns its final path.
pub(crate) fn emit(staged: &mut Outputs, p: &Pieces) -> Result<PathBuf, BuildError> {
    let (temp, path) = staged
        .stage_file(SUFFIX)
        .map_err(|e| invalid("iso", e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Removed when dropped, on success and on error alike.
    let work = tempfile::Builder::new()
        .prefix(&format!(".{stem}.iso-work-"))
        .tempdir_in(dir)
        .map_err(io("creating the ISO work directory"))?;
    let tree = work.path().join("tree");
    for (iso_path, blob) in &p.extra {
        let host = tree.join(iso_path.trim_start_matches('/'));
        if let Some(dir) = host.parent() {
            std::fs::create_dir_all(dir).map_err(stage("iso"))?;
        }
        write_blob(&host, blob, p.epoch)?;
    }
    // The embed area, empty: `iso customize` overwrites it in place in a copy of the ISO.
    let area = tree.join(embed::CONFIG_FILE.trim_start_matches('/'));
    if let Some(dir) = area.parent() {
        std::fs::create_dir_all(dir).map_err(stage("iso"))?;
    }
    write_blob(&area, &Blob::bytes(embed::empty()), p.epoch)?;

    // The ESP: the smallest FAT32 volume that holds the files, rounded up to a MiB.
    let esp_path = work.path().join("esp.img");
    let size = fat::min_size(&p.esp).div_ceil(1 << 20) << 20;
    let esp = File::create(&esp_path).map_err(stage("iso"))?;
    esp.set_len(size).map_err(stage("iso"))?;
    fat::write(
        &p.esp,
        &esp,
        0,
        size,
        &fat::Options {
            label: rke2_image_contract::partitions::ESP_FS_LABEL.into(),
            volume_id: p.esp_volume_id,
            mtime: p.epoch,
        },
    )
    .map_err(stage("iso"))?;
    drop(esp);

    // xorriso writes into the (empty) staged temporary.
    let args = xorriso_args(p, &temp, work.path());
    let out = Command::new("xorriso")
        .args(&args)
        .env("SOURCE_DATE_EPOCH", p.epoch.to_string())
        .output()
        .map_err(|e| {
            invalid(
                "iso",
                format!("cannot run xorriso ({e}); install xorriso (scripts/setup-host)"),
            )
        })?;
    if !out.status.success() {
        return Err(invalid(
            "iso",
            format!(
                "xorriso writing {} failed ({}): {}",
                temp.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(stage("iso"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_len_ends_at_the_last_non_zero_block() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8 << 20).unwrap();
        assert_eq!(used_len(&f, 4096, 4 << 20).unwrap(), 0);
        std::os::unix::fs::FileExt::write_all_at(&f, &[1], 4096 + 3 * 2048 + 5).unwrap();
        assert_eq!(used_len(&f, 4096, 4 << 20).unwrap(), 4 * 2048);
        // Past the 1 MiB read window.
        std::os::unix::fs::FileExt::write_all_at(&f, &[1], 4096 + (3 << 20)).unwrap();
        assert_eq!(used_len(&f, 4096, 4 << 20).unwrap(), (3 << 20) + 2048);
    }

    #[test]
    fn names_and_line() {
        assert_eq!(volume_id("qemu-test.1"), "QEMU_TEST_1");
        assert_eq!(volume_id(&"x".repeat(40)).len(), 32);
        assert_eq!(
            kernel_args("rke2.roothash=ab ro fips=1"),
            "rke2.roothash=ab ro fips=1 rke2.root=iso"
        );
        assert_eq!(uki_path("n", "1.0"), "EFI/Linux/n-1.0-live.efi");
        assert_eq!(gpt_guid_hex([0xff; 16]), "ffffffffffffff4fbfffffffffffffff");
        assert!(crate::esp::loader_conf("n").contains("default n-*"));
    }
}
