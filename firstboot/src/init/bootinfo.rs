//! The boot facts rke2-init hands to the running system (`contract::update::BootInfo` at
//! `/run/rke2-image/boot.json`) and, on a disk boot, the runtime mount unit of the ESP at
//! `/efi` (systemd-bless-boot and `rke2-update` need it). Written into the initrd's /run,
//! which `move_api` moves into the new root, so the running system finds them in its /run.

use std::fs;
use std::path::Path;

use rke2_image_contract::partitions;
use rke2_image_contract::update::{self as contract, BootInfo, LabelledPartition};

/// `/run/systemd/system/efi.mount` (relative to /run).
pub const EFI_MOUNT_UNIT: &str = "systemd/system/efi.mount";
/// Its enablement link (relative to /run).
pub const EFI_MOUNT_WANTS: &str = "systemd/system/local-fs.target.wants/efi.mount";

/// The facts: `parts` are (label, node, partuuid) of the boot disk's partitions.
pub fn boot_info(
    source: &str,
    slot: char,
    root_hash: &str,
    disk: &str,
    parts: &[(String, String, String)],
) -> BootInfo {
    let mut partitions: Vec<LabelledPartition> = parts
        .iter()
        .filter(|(l, _, _)| !l.is_empty())
        .map(|(label, node, partuuid)| LabelledPartition {
            label: label.clone(),
            node: node.clone(),
            partuuid: partuuid.to_ascii_uppercase(),
        })
        .collect();
    partitions.sort_by(|a, b| a.label.cmp(&b.label).then(a.node.cmp(&b.node)));
    BootInfo {
        source: source.to_string(),
        slot: slot.to_string(),
        root_hash: root_hash.to_string(),
        disk: disk.to_string(),
        partitions,
    }
}

/// The mount unit of the ESP (by partition GUID: unambiguous even with several disks).
pub fn efi_mount_unit(partuuid: &str) -> String {
    format!(
        "# Written by rke2-init: the boot disk's ESP, for systemd-bless-boot and rke2-update.\n\
         [Unit]\n\
         Description=EFI System Partition of the boot disk\n\
         Documentation=https://github.com/rke2-image/rke2-image/blob/main/firstboot/README.md\n\
         \n\
         [Mount]\n\
         What=/dev/disk/by-partuuid/{}\n\
         Where=/{}\n\
         Type=vfat\n\
         Options=umask=0077,noexec,nosuid,nodev\n",
        partuuid.to_ascii_lowercase(),
        contract::ESP_MOUNT
    )
}

/// Writes boot.json under `run` (the /run that becomes the new root's), and on a disk boot
/// with an ESP the mount unit and its `local-fs.target.wants` link.
pub fn write(run: &Path, info: &BootInfo) -> Result<(), String> {
    let rel = contract::BOOT_INFO
        .strip_prefix("run/")
        .unwrap_or(contract::BOOT_INFO);
    let p = run.join(rel);
    let mut text = serde_json::to_string_pretty(info).map_err(|e| e.to_string())?;
    text.push('\n');
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    if info.source != "disk" {
        return Ok(());
    }
    let Some(esp) = info.partition(partitions::ESP.label) else {
        return Ok(());
    };
    let unit = run.join(EFI_MOUNT_UNIT);
    let wants = run.join(EFI_MOUNT_WANTS);
    if let Some(d) = wants.parent() {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    fs::write(&unit, efi_mount_unit(&esp.partuuid))
        .map_err(|e| format!("writing {}: {e}", unit.display()))?;
    let _ = fs::remove_file(&wants);
    std::os::unix::fs::symlink("../efi.mount", &wants)
        .map_err(|e| format!("linking {}: {e}", wants.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<(String, String, String)> {
        [
            ("root-a", "/dev/vda2", "2a"),
            ("esp", "/dev/vda1", "0123abcd-0000-0000-0000-0000000000ef"),
            ("", "/dev/vda9", "99"),
            ("state", "/dev/vda6", "6"),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
    }

    #[test]
    fn boot_json_is_sorted_and_round_trips() {
        let b = boot_info("disk", 'b', "ab12", "/dev/vda", &parts());
        let labels: Vec<_> = b.partitions.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["esp", "root-a", "state"]);
        assert_eq!(
            b.partition("esp").map(|p| p.partuuid.as_str()),
            Some("0123ABCD-0000-0000-0000-0000000000EF")
        );
        let t = serde_json::to_string(&b).unwrap();
        assert!(t.contains("\"rootHash\":\"ab12\""), "{t}");
        assert_eq!(serde_json::from_str::<BootInfo>(&t).unwrap(), b);
    }

    #[test]
    fn writes_mount_unit_only_for_disk_boots() {
        let d = tempfile::tempdir().unwrap();
        let b = boot_info("disk", 'a', "ab", "/dev/vda", &parts());
        write(d.path(), &b).unwrap();
        let unit = fs::read_to_string(d.path().join(EFI_MOUNT_UNIT)).unwrap();
        assert!(unit.contains(
            "What=/dev/disk/by-partuuid/0123abcd-0000-0000-0000-0000000000ef\nWhere=/efi\nType=vfat\nOptions=umask=0077,noexec,nosuid,nodev\n"
        ), "{unit}");
        assert_eq!(
            fs::read_link(d.path().join(EFI_MOUNT_WANTS)).unwrap(),
            Path::new("../efi.mount")
        );
        let back: BootInfo =
            serde_json::from_slice(&fs::read(d.path().join("rke2-image/boot.json")).unwrap())
                .unwrap();
        assert_eq!(back, b);
        let e = tempfile::tempdir().unwrap();
        write(e.path(), &boot_info("iso", 'a', "ab", "", &[])).unwrap();
        assert!(e.path().join("rke2-image/boot.json").exists());
        assert!(!e.path().join(EFI_MOUNT_UNIT).exists());
    }
}
