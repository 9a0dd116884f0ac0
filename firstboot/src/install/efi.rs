//! The UEFI boot entry for an installed disk, through efivarfs (a directory passed in): a
//! `Boot####` load option for `\EFI\BOOT\BOOTX64.EFI` on the disk's ESP (an HD() device path
//! of GPT partition 1) and `BootNext` pointing at it, so the reboot after an install goes to
//! the disk even with the installation medium still attached (firmware would boot the CD
//! again). Only `BootNext` (one boot) is set: `BootOrder` stays the firmware's and the
//! operator's. An identical existing entry is reused, so installing again adds nothing.
//!
//! Formats: UEFI 2.10 §3.1.3 (EFI_LOAD_OPTION), §10.3.5.1 (Hard Drive media device path),
//! §10.3.5.4 (File Path media device path); efivarfs files start with the 4-byte attributes
//! (Linux Documentation/filesystems/efivarfs.rst).

use std::path::Path;

use super::run::Done;

/// EFI_GLOBAL_VARIABLE's GUID as efivarfs names it.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRS: u32 = 0x7;
const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// The loader the ESP carries for removable-media boot (systemd-boot).
pub const LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";

/// The EFI_LOAD_OPTION bytes for `description`, the ESP partition (number 1 at `first_lba`,
/// `sectors` long, GPT partition GUID `guid` in on-disk bytes) and `LOADER`.
pub fn load_option(description: &str, first_lba: u64, sectors: u64, guid: [u8; 16]) -> Vec<u8> {
    let mut path = Vec::new();
    // Hard Drive media device path: type 4, subtype 1, length 42.
    path.extend_from_slice(&[4, 1, 42, 0]);
    path.extend_from_slice(&1u32.to_le_bytes());
    path.extend_from_slice(&first_lba.to_le_bytes());
    path.extend_from_slice(&sectors.to_le_bytes());
    path.extend_from_slice(&guid);
    // Partition format GPT, signature type GUID.
    path.extend_from_slice(&[0x02, 0x02]);
    // File Path media device path: type 4, subtype 4, UCS-2 with the NUL.
    let file: Vec<u8> = LOADER
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    path.extend_from_slice(&[4, 4]);
    path.extend_from_slice(&((4 + file.len()) as u16).to_le_bytes());
    path.extend_from_slice(&file);
    // End of the entire device path.
    path.extend_from_slice(&[0x7f, 0xff, 4, 0]);

    let mut o = Vec::new();
    o.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    o.extend_from_slice(&(path.len() as u16).to_le_bytes());
    o.extend(
        description
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes),
    );
    o.extend_from_slice(&path);
    o
}

fn var(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}-{GLOBAL}"))
}

/// Adds (or reuses) the boot entry for `done`'s disk in `efivars` and sets `BootNext`; returns
/// the entry's number.
pub fn boot_next(efivars: &Path, done: &Done) -> Result<u16, String> {
    if !efivars.is_dir() {
        return Err(format!(
            "no UEFI variables at {} (not booted with UEFI, or efivarfs not mounted)",
            efivars.display()
        ));
    }
    let opt = load_option(
        &format!("rke2-image ({})", done.disk),
        done.esp_first_lba,
        done.esp_sectors,
        done.esp_guid,
    );
    let mut data = ATTRS.to_le_bytes().to_vec();
    data.extend_from_slice(&opt);
    let mut free = None;
    for n in 0..=0xffffu16 {
        let p = var(efivars, &format!("Boot{n:04X}"));
        match std::fs::read(&p) {
            Ok(b) if b == data => {
                free = Some((n, true));
                break;
            }
            Ok(_) => {}
            Err(_) if free.is_none() => free = Some((n, false)),
            Err(_) => {}
        }
        // Past the first free number, only an identical entry further on matters; firmware
        // numbers its entries densely, so stop after a short run of free numbers.
        if free.is_some_and(|(f, _)| n > f.saturating_add(32)) {
            break;
        }
    }
    let (n, exists) = free.ok_or("no free Boot#### number")?;
    if !exists {
        std::fs::write(var(efivars, &format!("Boot{n:04X}")), &data)
            .map_err(|e| format!("writing UEFI variable Boot{n:04X}: {e}"))?;
    }
    let mut next = ATTRS.to_le_bytes().to_vec();
    next.extend_from_slice(&n.to_le_bytes());
    std::fs::write(var(efivars, "BootNext"), &next)
        .map_err(|e| format!("writing UEFI variable BootNext: {e}"))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_option_layout() {
        let o = load_option("A", 2048, 131072, [0xab; 16]);
        assert_eq!(&o[0..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([o[4], o[5]]) as usize;
        // Description "A\0" in UCS-2, then the path list.
        assert_eq!(&o[6..10], &[b'A', 0, 0, 0]);
        let path = &o[10..];
        assert_eq!(path.len(), path_len);
        assert_eq!(&path[0..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(path[4..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(path[8..16].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(path[16..24].try_into().unwrap()), 131072);
        assert_eq!(&path[24..40], &[0xab; 16]);
        assert_eq!(&path[40..42], &[2, 2]);
        let fp = &path[42..];
        let flen = u16::from_le_bytes([fp[2], fp[3]]) as usize;
        assert_eq!(&fp[0..2], &[4, 4]);
        assert_eq!(flen, 4 + 2 * (LOADER.len() + 1));
        assert_eq!(&fp[flen..], &[0x7f, 0xff, 4, 0]);
    }

    #[test]
    fn entry_added_once_and_boot_next_set() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(var(d.path(), "Boot0000"), b"\x07\0\0\0other").unwrap();
        let done = Done {
            disk: "/dev/vda".into(),
            name: "vda".into(),
            wrote: true,
            bytes: 0,
            write_secs: 0.0,
            verify_secs: 0.0,
            esp_first_lba: 2048,
            esp_sectors: 8,
            esp_guid: [1; 16],
        };
        assert_eq!(boot_next(d.path(), &done), Ok(1));
        assert_eq!(
            std::fs::read(var(d.path(), "BootNext")).unwrap(),
            [7, 0, 0, 0, 1, 0]
        );
        // Again: the same entry, nothing added.
        std::fs::remove_file(var(d.path(), "BootNext")).unwrap();
        assert_eq!(boot_next(d.path(), &done), Ok(1));
        assert!(!var(d.path(), "Boot0002").exists());
        assert!(boot_next(&d.path().join("none"), &done)
            .unwrap_err()
            .contains("no UEFI variables"));
    }
}
