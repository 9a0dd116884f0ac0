//! The `qcow2` output: `<name>-<version>.qcow2`, the finished raw disk as a compressed qcow2
//! (for virtualisation platforms), and the reader `verify` and `inspect` use on one.
//!
//! Written by `qemu-img convert` from the raw temporary once its partition table is in place.
//! The options are pinned so the bytes depend on the raw image alone: zlib compression (the
//! default type differs between QEMU versions' builds), 64 KiB clusters, one coroutine (`-m 1`:
//! clusters are allocated in guest order, never in the order parallel requests finish), and
//! in-order writes (no `-W`). qcow2 itself stores no timestamps or host paths.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pipeline::{invalid, BuildError};
use crate::publish::{self, PublishError};

/// File name suffix of the output.
pub const SUFFIX: &str = "qcow2";
/// `qemu-img create`/`convert` options every build uses (see the module docs).
pub const OPTIONS: &str = "compression_type=zlib,cluster_size=65536";
/// The qcow2 header's magic, `QFI\xfb`.
const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Converts the raw temporary of `staged` into a staged `<stem>.qcow2`; returns its final path.
pub(crate) fn emit(staged: &mut publish::Outputs) -> Result<PathBuf, BuildError> {
    let raw = staged.temp_path().to_path_buf();
    let (temp, path) = staged
        .stage_file(SUFFIX)
        .map_err(|e: PublishError| invalid("qcow2", e.to_string()))?;
    let out = Command::new("qemu-img")
        .args([
            "convert", "-q", "-c", "-m", "1", "-f", "raw", "-O", "qcow2", "-o", OPTIONS,
        ])
        .arg(&raw)
        .arg(&temp)
        .output()
        .map_err(|e| {
            invalid(
                "qcow2",
                format!("cannot run qemu-img ({e}); install qemu-utils (scripts/setup-host)"),
            )
        })?;
    if !out.status.success() {
        return Err(invalid(
            "qcow2",
            format!(
                "qemu-img convert to {} failed ({}): {}",
                temp.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(path)
}

/// Whether the file starts with the qcow2 magic.
pub fn is_qcow2(file: &File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(magic == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The disk an image file carries, for `verify` and `inspect`: the file itself when it is raw,
/// or the disk of a qcow2 expanded into a sparse temporary beside it (removed on drop).
///
/// A qcow2 is expanded with `qemu-img convert` rather than read here: a correct reader needs
/// the header versions, L1/L2 tables, compressed-cluster descriptors with zlib and zstd,
/// backing files, external data files and extended L2 entries, and its own bugs would make
/// `verify` vouch for bytes QEMU would not present. The temporary is sparse (only the written
/// regions take space) and lives beside the image so no other file system fills up.
pub struct Disk {
    file: File,
    temp: Option<PathBuf>,
}

impl Disk {
    /// Opens `path`; a qcow2 is expanded first. Errors name the file.
    pub fn open(path: &Path) -> std::io::Result<Disk> {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(named)?;
        if !is_qcow2(&file).map_err(named)? {
            return Ok(Disk { file, temp: None });
        }
        let mut header = [0u8; 32];
        file.read_exact_at(&mut header, 0).map_err(|_| {
            std::io::Error::other(format!(
                "{}: a truncated qcow2 image (no complete header)",
                path.display()
            ))
        })?;
        let be64 =
            |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or_default());
        // A backing file or an external data file would make `qemu-img` read other files
        // (or, through `json:` names, other places): only a self-contained qcow2 is read, as
        // the build writes it.
        let version = u32::from_be_bytes(header[4..8].try_into().unwrap_or_default());
        let external_data = version >= 3 && {
            let mut f = [0u8; 8];
            file.read_exact_at(&mut f, 72).is_ok() && u64::from_be_bytes(f) & 0b100 != 0
        };
        if be64(8) != 0 || external_data {
            return Err(std::io::Error::other(format!(
                "{}: the qcow2 refers to another file (backing or external data file); verify \
                 and inspect read a self-contained image: `qemu-img convert -O qcow2` it first",
                path.display()
            )));
        }
        let size = be64(24);
        let (_, temp) = publish::beside(path, "expanded");
        let t = publish::create_exclusive(&temp, true).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{}: cannot create a temporary to expand it into: {e}",
                    temp.display()
                ),
            )
        })?;
        // From here the guard removes the temporary whatever happens.
        let disk = Disk {
            file: t,
            temp: Some(temp.clone()),
        };
        disk.file.set_len(size).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: cannot size it to {size} bytes: {e}", temp.display()),
            )
        })?;
        let out = Command::new("qemu-img")
            .args(["convert", "-q", "-n", "-f", "qcow2", "-O", "raw"])
            .arg(path)
            .arg(&temp)
            .output()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "{}: cannot run qemu-img to read it ({e}); install qemu-utils",
                    path.display()
                ))
            })?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{}: not a readable qcow2 image: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(disk)
    }

    /// The disk's bytes (the raw file, or the expanded temporary).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the image was a qcow2.
    pub fn was_qcow2(&self) -> bool {
        self.temp.is_some()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = std::fs::remove_file(t);
        }
    }
}
