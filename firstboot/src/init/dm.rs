//! device-mapper through its ioctls on `/dev/mapper/control` (no libdevmapper): create a
//! device, load a one-target read-only table, resume it.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
/// `sizeof(struct dm_ioctl)`.
const DM_IOCTL_SIZE: usize = 312;
const DM_READONLY_FLAG: u32 = 1;

const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// Builds the `struct dm_ioctl` header (+ optional target) for one call.
pub fn ioctl_buffer(
    name: &str,
    uuid: &str,
    flags: u32,
    target: Option<(u64, &str, &str)>,
) -> Vec<u8> {
    let mut tail = Vec::new();
    if let Some((len, ttype, params)) = target {
        // struct dm_target_spec: sector_start u64, length u64, status i32, next u32,
        // target_type[16], then the NUL-terminated parameter string, padded to 8.
        let mut spec = Vec::new();
        spec.extend_from_slice(&0u64.to_le_bytes());
        spec.extend_from_slice(&len.to_le_bytes());
        spec.extend_from_slice(&0i32.to_le_bytes());
        spec.extend_from_slice(&0u32.to_le_bytes());
        let mut tt = [0u8; 16];
        tt[..ttype.len().min(15)].copy_from_slice(&ttype.as_bytes()[..ttype.len().min(15)]);
        spec.extend_from_slice(&tt);
        spec.extend_from_slice(params.as_bytes());
        spec.push(0);
        while spec.len() % 8 != 0 {
            spec.push(0);
        }
        let next = spec.len() as u32;
        spec[20..24].copy_from_slice(&next.to_le_bytes());
        tail = spec;
    }
    let mut b = vec![0u8; DM_IOCTL_SIZE];
    b[0..4].copy_from_slice(&4u32.to_le_bytes()); // interface version 4.0.0
    let size = (DM_IOCTL_SIZE + tail.len()) as u32;
    b[12..16].copy_from_slice(&size.to_le_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_le_bytes());
    b[20..24].copy_from_slice(&u32::from(target.is_some()).to_le_bytes());
    b[28..32].copy_from_slice(&flags.to_le_bytes());
    let n = name.len().min(DM_NAME_LEN - 1);
    b[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    let u = uuid.len().min(DM_UUID_LEN - 1);
    b[176..176 + u].copy_from_slice(&uuid.as_bytes()[..u]);
    b.extend_from_slice(&tail);
    b
}

fn call(fd: i32, cmd: u8, buf: &mut [u8]) -> std::io::Result<()> {
    let req = nix::request_code_readwrite!(0xfd, cmd, DM_IOCTL_SIZE);
    // SAFETY: buf is a writable dm_ioctl header followed by its payload; data_size in the
    // header equals buf.len(), so the kernel stays inside it.
    let r = unsafe { libc::ioctl(fd, req as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates `name` with a read-only single-target table and activates it; returns the
/// new device's (major, minor).
pub fn create_readonly(
    name: &str,
    uuid: &str,
    sectors: u64,
    target_type: &str,
    params: &str,
) -> Result<(u64, u64), String> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| format!("opening /dev/mapper/control (is dm-mod loaded?): {e}"))?;
    let fd = ctl.as_raw_fd();
    let mut b = ioctl_buffer(name, uuid, 0, None);
    call(fd, DM_DEV_CREATE, &mut b).map_err(|e| format!("DM_DEV_CREATE {name}: {e}"))?;
    let mut d = [0u8; 8];
    d.copy_from_slice(&b[40..48]);
    let dev = u64::from_le_bytes(d);
    // huge_encode_dev layout.
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    let mut b = ioctl_buffer(
        name,
        "",
        DM_READONLY_FLAG,
        Some((sectors, target_type, params)),
    );
    call(fd, DM_TABLE_LOAD, &mut b)
        .map_err(|e| format!("DM_TABLE_LOAD {name} ({target_type} {params}): {e}"))?;
    let mut b = ioctl_buffer(name, "", 0, None);
    call(fd, DM_DEV_SUSPEND, &mut b).map_err(|e| format!("resuming {name}: {e}"))?;
    Ok((major, minor))
}

/// Removes the device-mapper device `name` (the installer's verification maps).
pub fn remove(name: &str) -> Result<(), String> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| format!("opening /dev/mapper/control (is dm-mod loaded?): {e}"))?;
    let mut b = ioctl_buffer(name, "", 0, None);
    call(ctl.as_raw_fd(), DM_DEV_REMOVE, &mut b).map_err(|e| format!("DM_DEV_REMOVE {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_layout() {
        let b = ioctl_buffer(
            "rke2-root",
            "U",
            DM_READONLY_FLAG,
            Some((80, "verity", "1 a b")),
        );
        // header + 40-byte spec + "1 a b\0" padded to 48
        assert_eq!(b.len(), DM_IOCTL_SIZE + 48);
        assert_eq!(
            u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(&b[48..57], b"rke2-root");
        assert_eq!(b[176], b'U');
        let spec = &b[DM_IOCTL_SIZE..];
        assert_eq!(u64::from_le_bytes(spec[8..16].try_into().unwrap()), 80);
        assert_eq!(&spec[24..30], b"verity");
        assert_eq!(&spec[40..46], b"1 a b\0");
    }
}
