//! What `rke2-init` reads from the kernel command line (keys in `contract::cmdline`).

use rke2_image_contract::cmdline as keys;
use std::time::Duration;

/// Default time to wait for the boot disk's partitions.
pub const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Lower-case hex sha256 root hash of the active slot.
    pub root_hash: String,
    /// `a` or `b`.
    pub slot: char,
    pub debug: bool,
    pub device_timeout: Duration,
    /// Where the root comes from (`rke2.root`).
    pub root: RootSource,
}

/// Where the verity-protected root comes from (`rke2.root`); verified either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The `root-<slot>` and `root-<slot>-verity` partitions of the boot disk; state on the
    /// state partition of that disk.
    Disk,
    /// The initramfs files `/rke2-root/root.img` + `/rke2-root/root.verity` (PXE), with state
    /// on tmpfs or on the device `rke2.state_disk` names.
    Initramfs { state: DisklessState },
    /// The files `/rke2/root.img` + `/rke2/verity.img` of the ISO 9660 medium the node booted
    /// from (live boot of the `iso` output), state as for [`RootSource::Initramfs`].
    Iso { state: DisklessState },
}

impl RootSource {
    /// Where a diskless (initramfs or ISO) root keeps its state; `None` for a disk boot.
    pub fn diskless_state(&self) -> Option<&DisklessState> {
        match self {
            RootSource::Disk => None,
            RootSource::Initramfs { state } | RootSource::Iso { state } => Some(state),
        }
    }
}

/// Where a diskless (initramfs-root) node keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisklessState {
    /// In RAM (ext4 on a loop device over a sparse initramfs file): the same layout and
    /// labels as the state partition, lost at power-off.
    Tmpfs,
    /// A whole block device, by kernel name (`/dev/vdb`).
    Disk(String),
}

/// Parses the command line; a missing or malformed root hash is an error because booting
/// without it would mean booting unverified code.
pub fn parse(cmdline: &str) -> Result<BootParams, String> {
    let root_hash = keys::get(cmdline, keys::ROOT_HASH)
        .ok_or_else(|| format!("{} missing from the kernel command line", keys::ROOT_HASH))?
        .to_ascii_lowercase();
    if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{}={root_hash:?} is not a 64-digit hex sha256 hash",
            keys::ROOT_HASH
        ));
    }
    let slot = match keys::get(cmdline, keys::SLOT).unwrap_or("a") {
        "a" => 'a',
        "b" => 'b',
        other => return Err(format!("{}={other:?}: expected a or b", keys::SLOT)),
    };
    let debug = match keys::get(cmdline, keys::DEBUG) {
        None | Some("0") | Some("no") | Some("false") => false,
        Some(_) => true,
    };
    let device_timeout = match keys::get(cmdline, keys::DEVICE_TIMEOUT) {
        None => DEFAULT_DEVICE_TIMEOUT,
        Some(v) => Duration::from_secs(
            v.parse()
                .map_err(|_| format!("{}={v:?}: expected whole seconds", keys::DEVICE_TIMEOUT))?,
        ),
    };
    let state_disk = keys::get(cmdline, keys::STATE_DISK);
    let diskless = || -> Result<DisklessState, String> {
        Ok(match state_disk {
            None => DisklessState::Tmpfs,
            Some(d) => DisklessState::Disk(state_device(d)?),
        })
    };
    let root = match keys::get(cmdline, keys::ROOT_SOURCE) {
        None => RootSource::Disk,
        Some(v) if v == keys::ROOT_DISK => RootSource::Disk,
        Some(v) if v == keys::ROOT_INITRAMFS => RootSource::Initramfs { state: diskless()? },
        Some(v) if v == keys::ROOT_ISO => RootSource::Iso { state: diskless()? },
        Some(other) => {
            return Err(format!(
                "{}={other:?}: expected {}, {} or {}",
                keys::ROOT_SOURCE,
                keys::ROOT_DISK,
                keys::ROOT_INITRAMFS,
                keys::ROOT_ISO
            ))
        }
    };
    if root == RootSource::Disk && state_disk.is_some() {
        return Err(format!(
            "{} is only for {}={} or {} (a disk boot keeps state on its own state partition)",
            keys::STATE_DISK,
            keys::ROOT_SOURCE,
            keys::ROOT_INITRAMFS,
            keys::ROOT_ISO
        ));
    }
    Ok(BootParams {
        root_hash,
        slot,
        debug,
        device_timeout,
        root,
    })
}

/// `rke2.state_disk` must be a kernel device name: the initrd has no udev, so
/// `/dev/disk/by-*` links do not exist yet.
fn state_device(v: &str) -> Result<String, String> {
    match v.strip_prefix("/dev/") {
        Some(n) if !n.is_empty() && !n.contains('/') && n != "." && n != ".." => Ok(v.to_string()),
        _ => Err(format!(
            "{}={v:?}: expected a kernel device name such as /dev/vdb (no /dev/disk/by-* links exist in the initrd)",
            keys::STATE_DISK
        )),
    }
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// What to do with the device `rke2.state_disk` names, from its first MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDiskAction {
    /// It holds the state filesystem already.
    Reuse,
    /// It is blank (first MiB zero): format it.
    Format,
    /// It holds something else; never overwritten.
    Refuse(String),
}

/// Decides from the device's first MiB (at least 4 KiB) and the state filesystem label.
pub fn state_disk_action(head: &[u8], fs_label: &str) -> StateDiskAction {
    if head.len() < 4096 {
        return StateDiskAction::Refuse(format!(
            "only {} bytes readable; too small for a state filesystem",
            head.len()
        ));
    }
    if super::state::is_ext4_superblock(&head[1024..3072]) {
        // s_volume_name: 16 bytes at offset 120 of the superblock.
        let raw = &head[1024 + 120..1024 + 136];
        let label = String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or_default());
        if label == fs_label {
            return StateDiskAction::Reuse;
        }
        return StateDiskAction::Refuse(format!(
            "holds an ext4 filesystem labelled {label:?}, not {fs_label:?}; wipe it (wipefs -a) to have it formatted, or name another device"
        ));
    }
    if head.iter().all(|b| *b == 0) {
        return StateDiskAction::Format;
    }
    StateDiskAction::Refuse(format!(
        "is not blank and holds no {fs_label:?} filesystem; wipe it (wipefs -a) to have it formatted, or name another device"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "3f1a4c0e9b2d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7";

    #[test]
    fn parses_keys() {
        let p = parse(&format!(
            "root=x rke2.roothash={} rke2.slot=b rke2.debug rke2.device_timeout=5",
            H.to_uppercase()
        ))
        .unwrap();
        assert_eq!(p.root_hash, H);
        assert_eq!(p.slot, 'b');
        assert!(p.debug);
        assert_eq!(p.device_timeout, Duration::from_secs(5));
        let p = parse(&format!("rke2.roothash={H}")).unwrap();
        assert_eq!(
            (p.slot, p.debug, p.device_timeout),
            ('a', false, DEFAULT_DEVICE_TIMEOUT)
        );
    }

    #[test]
    fn meminfo_total() {
        let m = "MemTotal:        3006572 kB\nMemFree:         2700000 kB\n";
        assert_eq!(mem_total_kib(m), Some(3_006_572));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_kib("MemTotal: x kB\n"), None);
    }

    #[test]
    fn root_source_and_state() {
        let p = parse(&format!("rke2.roothash={H}")).unwrap();
        assert_eq!(p.root, RootSource::Disk);
        let p = parse(&format!("rke2.roothash={H} rke2.root=disk")).unwrap();
        assert_eq!(p.root, RootSource::Disk);
        let p = parse(&format!("rke2.roothash={H} rke2.root=initramfs")).unwrap();
        assert_eq!(
            p.root,
            RootSource::Initramfs {
                state: DisklessState::Tmpfs
            }
        );
        let p = parse(&format!(
            "rke2.roothash={H} rke2.root=initramfs rke2.state_disk=/dev/vdb"
        ))
        .unwrap();
        assert_eq!(
            p.root,
            RootSource::Initramfs {
                state: DisklessState::Disk("/dev/vdb".into())
            }
        );
        let p = parse(&format!("rke2.roothash={H} rke2.root=iso")).unwrap();
        assert_eq!(
            p.root,
            RootSource::Iso {
                state: DisklessState::Tmpfs
            }
        );
        let p = parse(&format!(
            "rke2.roothash={H} rke2.root=iso rke2.state_disk=/dev/vdb"
        ))
        .unwrap();
        assert_eq!(
            p.root.diskless_state(),
            Some(&DisklessState::Disk("/dev/vdb".into()))
        );
        assert!(parse("rke2.root=iso")
            .unwrap_err()
            .contains("rke2.roothash missing"));
        // A root source without a root hash is still refused: there is no unverified mode.
        assert!(parse("rke2.root=initramfs")
            .unwrap_err()
            .contains("rke2.roothash missing"));
        for bad in [
            "rke2.root=nfs",
            "rke2.root=initramfs rke2.state_disk=vdb",
            "rke2.root=initramfs rke2.state_disk=/dev/disk/by-id/x",
            "rke2.root=initramfs rke2.state_disk=/dev/..",
            "rke2.root=iso rke2.state_disk=sr0",
            "rke2.state_disk=/dev/vdb",
        ] {
            let e = parse(&format!("rke2.roothash={H} {bad}")).unwrap_err();
            assert!(
                e.contains("rke2.root") || e.contains("rke2.state_disk"),
                "{bad}: {e}"
            );
        }
    }

    /// Oracle: mkfs.ext4 writes the superblock and label the decision reads.
    #[test]
    fn state_disk_decision() {
        let label = rke2_image_contract::partitions::STATE_FS_LABEL;
        assert_eq!(
            state_disk_action(&vec![0u8; 1 << 20], label),
            StateDiskAction::Format
        );
        let mut dirty = vec![0u8; 1 << 20];
        dirty[512] = b'E'; // e.g. a GPT header
        assert!(matches!(
            state_disk_action(&dirty, label),
            StateDiskAction::Refuse(m) if m.contains("not blank")
        ));
        assert!(matches!(
            state_disk_action(&[0u8; 100], label),
            StateDiskAction::Refuse(_)
        ));
        let t = tempfile::tempdir().unwrap();
        for (l, want_reuse) in [(label, true), ("other", false)] {
            let img = t.path().join(l);
            std::fs::File::create(&img)
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
            let st = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", l])
                .arg(&img)
                .status()
                .unwrap();
            assert!(st.success());
            let head = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
            match state_disk_action(&head, label) {
                StateDiskAction::Reuse => assert!(want_reuse),
                StateDiskAction::Refuse(m) => {
                    assert!(!want_reuse);
                    assert!(m.contains("\"other\""), "{m}");
                }
                StateDiskAction::Format => panic!("an ext4 disk must never be formatted"),
            }
        }
    }

    #[test]
    fn refuses_missing_or_bad_hash() {
        assert!(parse("quiet")
            .unwrap_err()
            .contains("rke2.roothash missing"));
        assert!(parse("rke2.roothash=abc").unwrap_err().contains("64-digit"));
        assert!(parse(&format!("rke2.roothash={H} rke2.slot=c"))
            .unwrap_err()
            .contains("rke2.slot"));
    }
}
