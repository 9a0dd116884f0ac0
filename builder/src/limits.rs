//! Size limits for everything the build reads whole into memory.
//!
//! A base archive is input like any other: a 100 KB compressed entry can claim to be a 3 GiB
//! `os-release`. Every whole-file read from the image tree is checked against a limit that fits
//! the file's purpose ([`for_path`]) before a byte is read; files read from the build host
//! (the definition, checksum lists) are opened without blocking, must be regular files and are
//! read through a bound ([`read_host_file`]).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Definitions and checksum lists are small; anything larger is a mistake or an attack.
pub const HOST_TEXT: u64 = MIB;
pub const OS_RELEASE: u64 = 64 * KIB;
pub const KERNEL_CONFIG: u64 = 4 * MIB;
pub const MODULES_INDEX: u64 = 16 * MIB;
pub const FILE_CONTEXTS: u64 = 64 * MIB;
/// One file copied into the initrd (a kernel module, firmware).
pub const INITRD_FILE: u64 = 64 * MIB;
pub const SYSTEMD_BOOT: u64 = 16 * MIB;
/// systemd's EFI stub the unified kernel image is built from (~50 KiB in systemd 252).
pub const EFI_STUB: u64 = 16 * MIB;
pub const KERNEL: u64 = 256 * MIB;
/// Any other configuration file the build reads (`/etc/passwd`, `/etc/selinux/config`, …).
pub const OTHER: u64 = 16 * MIB;

#[derive(Debug, thiserror::Error)]
#[error("{path} is {size} bytes; the limit for {purpose} is {limit} bytes (is the base archive damaged or hostile?)")]
pub struct TooLarge {
    pub path: String,
    pub size: u64,
    pub limit: u64,
    pub purpose: &'static str,
}

/// The limit for reading the image-tree file `path` (relative, no leading `/`) whole, and what
/// that file is for.
pub fn for_path(path: &[u8]) -> (u64, &'static str) {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    if name == b"os-release" {
        (OS_RELEASE, "os-release")
    } else if path.starts_with(b"boot/config-") {
        (KERNEL_CONFIG, "a kernel configuration")
    } else if path.starts_with(b"boot/vmlinuz-") {
        (KERNEL, "a kernel")
    } else if name.starts_with(b"modules.") {
        (MODULES_INDEX, "a kernel modules index")
    } else if name.ends_with(b"file_contexts") || path.windows(9).any(|w| w == b"/contexts") {
        (FILE_CONTEXTS, "SELinux file contexts")
    } else if name.ends_with(b".efi") {
        (SYSTEMD_BOOT, "a boot loader")
    } else if path.starts_with(b"usr/lib/modules/") || path.starts_with(b"lib/modules/") {
        (INITRD_FILE, "a kernel module")
    } else if path.starts_with(b"usr/lib/firmware/") || path.starts_with(b"lib/firmware/") {
        (INITRD_FILE, "firmware")
    } else {
        (OTHER, "a configuration file")
    }
}

/// Refuses `len` bytes for the image-tree file `path` when over its limit.
pub fn check(path: &[u8], len: u64) -> Result<(), TooLarge> {
    check_with(path, len, for_path(path))
}

/// Like [`check`] with an explicit limit.
pub fn check_with(
    path: &[u8],
    len: u64,
    (limit, purpose): (u64, &'static str),
) -> Result<(), TooLarge> {
    if len > limit {
        return Err(TooLarge {
            path: format!("/{}", String::from_utf8_lossy(path)),
            size: len,
            limit,
            purpose,
        });
    }
    Ok(())
}

/// Reads a build-host file whole: opened without blocking (a FIFO or a device never stalls the
/// build), refused unless it is a regular file of at most `limit` bytes (counted while reading,
/// so `/dev/zero` or a file growing meanwhile is refused too). `what` names the file's role.
pub fn read_host_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open the {what}: {}", io_reason(&e)))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read the {what}: {}", io_reason(&e)))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(format!("the {what} is {kind}; give a regular file"));
    }
    let mut data = Vec::with_capacity(meta.len().min(limit) as usize);
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read the {what}: {}", io_reason(&e)))?;
    if data.len() as u64 > limit {
        return Err(format!(
            "the {what} is larger than the limit of {limit} bytes"
        ));
    }
    Ok(data)
}

/// An I/O error's reason without Rust's ` (os error N)` suffix.
pub fn io_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_purpose() {
        assert_eq!(for_path(b"usr/lib/os-release").0, OS_RELEASE);
        assert_eq!(for_path(b"boot/config-6.1.0-28-amd64").0, KERNEL_CONFIG);
        assert_eq!(for_path(b"boot/vmlinuz-6.1.0-28-amd64").0, KERNEL);
        assert_eq!(
            for_path(b"usr/lib/modules/6.1/modules.dep").0,
            MODULES_INDEX
        );
        assert_eq!(
            for_path(b"etc/selinux/default/contexts/files/file_contexts").0,
            FILE_CONTEXTS
        );
        assert_eq!(
            for_path(b"usr/lib/systemd/boot/efi/systemd-bootx64.efi").0,
            SYSTEMD_BOOT
        );
        assert_eq!(for_path(b"usr/lib/modules/6.1/kernel/a.ko").0, INITRD_FILE);
        assert_eq!(for_path(b"etc/passwd").0, OTHER);
        let e = check(b"etc/os-release", 3 << 30).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/os-release is 3221225472 bytes; the limit for os-release is 65536"),
            "{e}"
        );
    }

    #[test]
    fn host_files_must_be_regular_and_bounded() {
        let e = read_host_file(Path::new("/dev/zero"), 16, "definition").unwrap_err();
        assert!(e.contains("is a device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_host_file(dir.path(), 16, "definition").unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_host_file(&fifo, 16, "definition").unwrap_err();
        assert!(e.contains("is a FIFO"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, [b'x'; 17]).unwrap();
        assert!(read_host_file(&big, 16, "definition")
            .unwrap_err()
            .contains("limit of 16"));
        std::fs::write(&big, [b'x'; 16]).unwrap();
        assert_eq!(read_host_file(&big, 16, "definition").unwrap().len(), 16);
        let e = read_host_file(&dir.path().join("none"), 16, "definition").unwrap_err();
        assert_eq!(e, "cannot open the definition: No such file or directory");
    }
}
