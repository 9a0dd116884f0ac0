//! `rke2-update`: A/B updates of a node installed on a disk (`contract::update` has the
//! bundle format, the boot facts and the entry names).
//!
//! - [`apply`]: verify a signed bundle, write it into the inactive slot, verify what was
//!   written through dm-verity, install the slot's boot entry with a boot counter.
//! - [`status`], [`rollback`]: what runs and what boots next; make the other slot win.
//! - [`health`]: the gate `rke2-update-health.service` runs before `boot-complete.target`.
//!
//! Every function takes its roots ([`Roots`]) so tests run on temporary directories and on
//! regular files standing in for partitions.

pub mod apply;
pub mod bundle;
pub mod esp;
pub mod health;
pub mod rollback;
pub mod source;
pub mod state;
pub mod status;

use std::path::{Path, PathBuf};

use rke2_image_contract::paths;
use rke2_image_contract::update::{self as contract, BootInfo, Policy};

/// The efivar systemd-boot sets when the booted entry has a boot counter (a counted boot).
pub const BOOT_COUNT_EFIVAR: &str = "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// What the node programs read of `usr/share/rke2-image/image-info.json` (the builder's
/// compose step writes `name`, `version`, `epoch` and maybe `prettyName`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
}

/// Where everything lives; [`Roots::system`] gives a node's paths.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The system root (image-info, policy).
    pub root: PathBuf,
    /// The mounted ESP.
    pub esp: PathBuf,
    /// `/sys/firmware/efi/efivars`.
    pub efivars: PathBuf,
    /// The trusted public keys.
    pub keys: PathBuf,
    /// The update record's directory.
    pub state: PathBuf,
    /// `boot.json` written by rke2-init.
    pub boot_info: PathBuf,
}

impl Roots {
    pub fn system(root: &Path) -> Roots {
        Roots {
            root: root.to_path_buf(),
            esp: root.join(contract::ESP_MOUNT),
            efivars: root.join("sys/firmware/efi/efivars"),
            keys: root.join(contract::KEYS_DIR),
            state: root.join(state::DIR),
            boot_info: root.join(contract::BOOT_INFO),
        }
    }

    pub fn boot_info(&self) -> Result<BootInfo, String> {
        let p = &self.boot_info;
        let b = std::fs::read(p).map_err(|e| {
            format!(
                "reading {}: {e} (written by rke2-init at boot; this system was not booted by \
                 an rke2-image initrd)",
                p.display()
            )
        })?;
        serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// `boot.json`, refusing anything but a disk boot.
    pub fn disk_boot(&self) -> Result<BootInfo, String> {
        let b = self.boot_info()?;
        if b.source != "disk" {
            return Err(format!(
                "this node runs from an {} boot ({}), not from a disk; install it to a disk \
                 first (an update replaces the inactive slot of the disk)",
                if b.source == "iso" {
                    "ISO"
                } else {
                    "initramfs/PXE"
                },
                b.source
            ));
        }
        let slot = running_slot(&b)?;
        for s in [slot, other(slot)] {
            for l in [format!("root-{s}"), format!("root-{s}-verity")] {
                if b.partition(&l).is_none() {
                    return Err(format!(
                        "{}: the boot disk {} has no partition labelled {l}",
                        self.boot_info.display(),
                        b.disk
                    ));
                }
            }
        }
        Ok(b)
    }

    pub fn image_info(&self) -> Result<ImageInfo, String> {
        let p = self.root.join(paths::IMAGE_INFO);
        let b = std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// The update policy (the contract's defaults when the image has none).
    pub fn policy(&self) -> Result<Policy, String> {
        let p = self.root.join(contract::POLICY);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(format!("reading {}: {e}", p.display())),
        }
    }

    /// Whether systemd-boot counts this boot (the booted entry has a counter).
    pub fn counted_boot(&self) -> bool {
        self.efivars.join(BOOT_COUNT_EFIVAR).exists()
    }
}

pub fn running_slot(b: &BootInfo) -> Result<char, String> {
    match b.slot.as_str() {
        "a" => Ok('a'),
        "b" => Ok('b'),
        s => Err(format!("boot.json: unknown slot {s:?} (expected a or b)")),
    }
}

/// The other slot.
pub fn other(slot: char) -> char {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}
