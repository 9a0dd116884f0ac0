//! QEMU fw_cfg (`-fw_cfg name=opt/org.rke2-image/config,file=...`), seen through the
//! `qemu_fw_cfg` module's sysfs interface.

use std::path::PathBuf;

use super::{read_limited, Found, Source, SourceError};

/// fw_cfg keys, in priority order: ours, then Ignition's.
pub const KEYS: [&str; 2] = ["opt/org.rke2-image/config", "opt/com.coreos/config"];

#[derive(Debug)]
pub struct FwCfg {
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
}

impl Source for FwCfg {
    fn name(&self) -> &'static str {
        "QEMU fw_cfg"
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        for k in KEYS {
            let p = self
                .sys
                .join("firmware/qemu_fw_cfg/by_name")
                .join(k)
                .join("raw");
            if let Some(bytes) = read_limited(&p)? {
                return Ok(Some(Found {
                    origin: format!("fw_cfg {k}"),
                    bytes,
                    meta_hostname: None,
                }));
            }
        }
        Ok(None)
    }
}
