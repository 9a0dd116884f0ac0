//! A configuration file on the ESP (`rke2-image/node-config.yaml`), so a user can drop it onto
//! the FAT partition of a written disk or USB stick.

use std::path::{Path, PathBuf};

use rke2_image_contract::partitions::ESP_FS_LABEL;

use super::{by_label, read_limited, Found, Mounter, Source, SourceError};

/// Path of the configuration on the ESP.
pub const ESP_NODE_CONFIG: &str = "rke2-image/node-config.yaml";

pub struct Esp {
    /// Directories where the ESP may already be mounted (e.g. `/efi`, `/boot/efi`, `/boot`).
    pub mounted: Vec<PathBuf>,
    /// `/dev`, to find the ESP by its filesystem label when it is not mounted.
    pub dev: PathBuf,
    pub mounter: Box<dyn Mounter>,
}

impl std::fmt::Debug for Esp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Esp")
            .field("mounted", &self.mounted)
            .finish()
    }
}

/// Reads the configuration from a mounted ESP directory.
pub fn read_dir(dir: &Path) -> Result<Option<Found>, SourceError> {
    Ok(
        read_limited(&dir.join(ESP_NODE_CONFIG))?.map(|bytes| Found {
            origin: format!("ESP {ESP_NODE_CONFIG}"),
            bytes,
            meta_hostname: None,
        }),
    )
}

impl Source for Esp {
    fn name(&self) -> &'static str {
        "file on the ESP"
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        for d in &self.mounted {
            if d.join("EFI").is_dir() || d.join("loader").is_dir() {
                return read_dir(d);
            }
        }
        match by_label(&self.dev, ESP_FS_LABEL) {
            Some(devpath) => {
                let m = self.mounter.mount(&devpath)?;
                read_dir(m.dir())
            }
            None => Ok(None),
        }
    }
}
