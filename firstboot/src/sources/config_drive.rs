//! Config drives: a NoCloud volume labelled `CIDATA`/`cidata` (`user-data`, `meta-data`), or a
//! volume labelled `RKE2CFG` holding a node configuration. Finding and mounting the volume
//! ([`ConfigDrive`]) is separate from reading what is on it ([`read_volume`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{by_label, read_limited, Found, Mounter, Source, SourceError};

pub const NOCLOUD_LABELS: [&str; 2] = ["CIDATA", "cidata"];
pub const RKE2_LABEL: &str = "RKE2CFG";
/// Files looked for on an `RKE2CFG` volume, in order.
pub const RKE2_FILES: [&str; 3] = ["node-config.yaml", "config.ign", "user-data"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NoCloud,
    Rke2,
}

/// Reads the configuration on a mounted volume.
pub fn read_volume(dir: &Path, kind: Kind) -> Result<Option<Found>, SourceError> {
    match kind {
        Kind::NoCloud => {
            let Some(bytes) = read_limited(&dir.join("user-data"))? else {
                return Err(SourceError::Failed {
                    source_name: "NoCloud config drive",
                    msg: "volume has no user-data file".into(),
                });
            };
            let meta_hostname = match read_limited(&dir.join("meta-data"))? {
                Some(m) => local_hostname(&m)?,
                None => None,
            };
            Ok(Some(Found {
                origin: "NoCloud config drive user-data".into(),
                bytes,
                meta_hostname,
            }))
        }
        Kind::Rke2 => {
            for f in RKE2_FILES {
                if let Some(bytes) = read_limited(&dir.join(f))? {
                    return Ok(Some(Found {
                        origin: format!("{RKE2_LABEL} volume {f}"),
                        bytes,
                        meta_hostname: None,
                    }));
                }
            }
            Err(SourceError::Failed {
                source_name: "RKE2CFG volume",
                msg: format!("volume has none of {}", RKE2_FILES.join(", ")),
            })
        }
    }
}

/// `local-hostname` from NoCloud meta-data (YAML or JSON).
fn local_hostname(meta: &[u8]) -> Result<Option<String>, SourceError> {
    let fail = |msg: String| SourceError::Failed {
        source_name: "NoCloud meta-data",
        msg,
    };
    let text = std::str::from_utf8(meta).map_err(|_| fail("not valid UTF-8".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_saphyr::from_str_with_options(text, crate::dialects::yaml_options())
        .map_err(|e| fail(e.to_string()))?;
    Ok(v.get("local-hostname")
        .or_else(|| v.get("local_hostname"))
        .and_then(Value::as_str)
        .map(str::to_string))
}

pub struct ConfigDrive {
    /// `/dev`
    pub dev: PathBuf,
    pub mounter: Box<dyn Mounter>,
}

impl std::fmt::Debug for ConfigDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigDrive")
            .field("dev", &self.dev)
            .finish()
    }
}

impl ConfigDrive {
    /// The first config-drive device present, with its kind.
    pub fn locate(&self) -> Option<(PathBuf, Kind)> {
        NOCLOUD_LABELS
            .iter()
            .map(|l| (*l, Kind::NoCloud))
            .chain([(RKE2_LABEL, Kind::Rke2)])
            .find_map(|(l, k)| by_label(&self.dev, l).map(|p| (p, k)))
    }
}

impl Source for ConfigDrive {
    fn name(&self) -> &'static str {
        "config drive (CIDATA / RKE2CFG)"
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        let Some((dev, kind)) = self.locate() else {
            return Ok(None);
        };
        let m = self.mounter.mount(&dev)?;
        read_volume(m.dir(), kind)
    }
}
