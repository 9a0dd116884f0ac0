//! Where the node configuration comes from. Sources are tried in a fixed order and the first
//! one that finds a configuration wins:
//!
//! 1. [`cmdline_url`]: `rke2.config.url=` on the kernel command line;
//! 2. [`fw_cfg`]: QEMU fw_cfg `opt/org.rke2-image/config`, then `opt/com.coreos/config`;
//! 3. [`config_drive`]: a volume labelled `CIDATA`/`cidata` (NoCloud) or `RKE2CFG`;
//! 4. [`medium`]: on a live ISO boot, the configuration embedded in the ISO by
//!    `rke2-image iso customize`;
//! 5. [`esp`]: `rke2-image/node-config.yaml` on the ESP;
//! 6. [`baked`]: defaults baked into the image.
//!
//! The first three are per machine (a URL templated with its MAC, a VM's fw_cfg, a drive
//! attached to it); the embedded file is rack-wide (one ISO for every machine), so an explicit
//! per-machine configuration beats it. It beats the ESP file and the baked defaults: both are
//! less specific still (the ESP of a live ISO is the same read-only medium).
//!
//! A source that is configured but broken (URL unreachable, volume unreadable) is an error, not
//! a reason to fall through to the next: booting with the wrong configuration is worse.

pub mod baked;
pub mod cmdline_url;
pub mod config_drive;
pub mod esp;
pub mod fw_cfg;
pub mod medium;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dialects::MAX_CONFIG_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {msg}")]
    Failed {
        source_name: &'static str,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Read { path: PathBuf, msg: String },
}

/// A configuration found by a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Human-readable origin, e.g. `fw_cfg opt/com.coreos/config`.
    pub origin: String,
    pub bytes: Vec<u8>,
    /// NoCloud meta-data `local-hostname`.
    pub meta_hostname: Option<String>,
}

pub trait Source {
    fn name(&self) -> &'static str;
    /// `Ok(None)`: nothing here, try the next source.
    fn fetch(&self) -> Result<Option<Found>, SourceError>;
}

/// Tries the sources in order; `log` hears which source is tried.
pub fn first_found(
    sources: &[Box<dyn Source>],
    log: &mut dyn FnMut(&str),
) -> Result<Option<Found>, SourceError> {
    for s in sources {
        log(&format!("looking for a configuration: {}", s.name()));
        if let Some(f) = s.fetch()? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Reads a file of at most [`MAX_CONFIG_BYTES`]; `None` if it does not exist.
pub fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, SourceError> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SourceError::Read {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
        }
    };
    let mut out = Vec::new();
    f.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| SourceError::Read {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    if out.len() > MAX_CONFIG_BYTES {
        return Err(SourceError::Read {
            path: path.to_path_buf(),
            msg: format!("larger than the limit of {MAX_CONFIG_BYTES} bytes"),
        });
    }
    Ok(Some(out))
}

/// Mounts a block device read-only somewhere and unmounts it when dropped. Kept apart from the
/// sources so that what is on a volume can be parsed (and tested) without mounting anything.
pub trait Mounter {
    fn mount(&self, device: &Path) -> Result<Box<dyn Mounted>, SourceError>;
}

pub trait Mounted {
    fn dir(&self) -> &Path;
}

/// Mounts read-only with the mount(2) system call, trying the filesystems config volumes use.
/// Not `mount(8)`: under SELinux that runs as `mount_t`, which may not mount on a directory
/// the agent created under /run; the agent's own domain may.
#[derive(Debug)]
pub struct SystemMounter {
    /// Directory under which mount points are created (e.g. `/run/rke2-firstboot`).
    pub base: PathBuf,
}

struct SystemMount {
    dir: PathBuf,
}

impl Mounted for SystemMount {
    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SystemMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount(&self.dir);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Filesystems a config drive, an RKE2CFG volume or the ESP may carry.
const VOLUME_FSTYPES: [&str; 3] = ["vfat", "iso9660", "ext4"];

impl Mounter for SystemMounter {
    fn mount(&self, device: &Path) -> Result<Box<dyn Mounted>, SourceError> {
        use nix::mount::MsFlags;
        let name = device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "volume".into());
        let dir = self.base.join(format!("mnt-{name}"));
        fs::create_dir_all(&dir).map_err(|e| SourceError::Read {
            path: dir.clone(),
            msg: e.to_string(),
        })?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mut tried = Vec::new();
        for fstype in VOLUME_FSTYPES {
            match nix::mount::mount(Some(device), &dir, Some(fstype), flags, None::<&str>) {
                Ok(()) => return Ok(Box::new(SystemMount { dir })),
                Err(e) => tried.push(format!("{fstype}: {e}")),
            }
        }
        let _ = fs::remove_dir(&dir);
        Err(SourceError::Read {
            path: device.to_path_buf(),
            msg: format!("mount failed ({})", tried.join(", ")),
        })
    }
}

/// A device by filesystem label under a `/dev` tree (`disk/by-label/<label>`).
pub fn by_label(dev: &Path, label: &str) -> Option<PathBuf> {
    let p = dev.join("disk/by-label").join(label);
    p.symlink_metadata().is_ok().then_some(p)
}
