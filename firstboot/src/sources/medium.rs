//! The configuration embedded in the live ISO the node booted from (`rke2-image iso customize`):
//! the embed area [`embed::CONFIG_FILE`] on the ISO 9660 side of the boot medium. Only on a
//! live boot (`rke2.root=iso` on the command line). The medium is the device under the
//! `rke2-iso-root` dm-linear mapping `rke2-init` made (it is held by that mapping, so it is read
//! raw, never mounted); without that mapping, the whole block devices carrying the area.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rke2_image_contract::iso9660::{self, IsoError};
use rke2_image_contract::{cmdline, embed};

use super::{Found, Source, SourceError};
use crate::dialects::MAX_CONFIG_BYTES;

const NAME: &str = "embedded in the boot ISO";

#[derive(Debug)]
pub struct Medium {
    /// Contents of `/proc/cmdline`.
    pub cmdline: String,
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

impl Medium {
    pub fn from_paths(proc: &Path, sys: &Path, dev: &Path) -> Medium {
        Medium {
            cmdline: std::fs::read_to_string(proc.join("cmdline")).unwrap_or_default(),
            sys: sys.to_path_buf(),
            dev: dev.to_path_buf(),
        }
    }
}

fn fail(msg: String) -> SourceError {
    SourceError::Failed {
        source_name: NAME,
        msg,
    }
}

/// The configuration in the embed area of the medium `dev` (`None`: no area, or empty).
pub fn read_area(dev: &Path) -> Result<Option<Vec<u8>>, SourceError> {
    let err = |msg: String| fail(format!("{}: {msg}", dev.display()));
    let f = File::open(dev).map_err(|e| err(e.to_string()))?;
    let e = match iso9660::find(&f, embed::CONFIG_FILE) {
        Ok(e) => e,
        // Not an ISO, or one built before the embed area existed: nothing here.
        Err(IsoError::NotFound(_) | IsoError::NotIso) => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let area_len = usize::try_from(e.len).unwrap_or(usize::MAX);
    let mut header = vec![0u8; embed::HEADER_BYTES.min(area_len)];
    f.read_exact_at(&mut header, e.offset)
        .map_err(|e| err(e.to_string()))?;
    let named = |x: embed::EmbedError| err(format!("{}: {x}", embed::CONFIG_FILE));
    let len = embed::payload_len(&header, area_len).map_err(named)?;
    if len > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "{}: a configuration of {len} bytes, more than the limit of {MAX_CONFIG_BYTES}",
            embed::CONFIG_FILE
        )));
    }
    let mut area = vec![0u8; embed::HEADER_BYTES + len];
    f.read_exact_at(&mut area, e.offset)
        .map_err(|e| err(e.to_string()))?;
    embed::decode(&area, area_len).map_err(named)
}

impl Source for Medium {
    fn name(&self) -> &'static str {
        NAME
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        if cmdline::get(&self.cmdline, cmdline::ROOT_SOURCE) != Some(cmdline::ROOT_ISO) {
            return Ok(None);
        }
        for name in crate::init::iso_medium_candidates(&self.sys) {
            let node = self.dev.join(&name);
            if let Some(bytes) = read_area(&node)? {
                return Ok(Some(Found {
                    origin: format!("{} on {}", embed::CONFIG_FILE, node.display()),
                    bytes,
                    meta_hostname: None,
                }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// An ISO written by xorriso with `area` as `/rke2/config.img`.
    fn iso_with(area: &[u8]) -> Vec<u8> {
        let w = tempfile::tempdir().unwrap();
        fs::create_dir_all(w.path().join("tree/rke2")).unwrap();
        fs::write(w.path().join("tree/rke2/config.img"), area).unwrap();
        let out = w.path().join("out.iso");
        rke2_testsupport::iso::mkisofs(&w.path().join("tree"), &out, &[]).unwrap();
        fs::read(out).unwrap()
    }

    fn have_xorriso() -> bool {
        rke2_testsupport::prereq::program("xorriso", "xorriso")
    }

    fn medium(t: &Path, disks: &[(&str, Vec<u8>)], slave_of_root: Option<&str>) -> Medium {
        for (name, img) in disks {
            fs::write(t.join("dev").join(name), img).unwrap();
            let c = t.join("sys/class/block").join(name);
            fs::create_dir_all(&c).unwrap();
            fs::write(c.join("dev"), "11:0\n").unwrap();
        }
        if let Some(s) = slave_of_root {
            let d = t.join("sys/block/dm-0");
            fs::create_dir_all(d.join("dm")).unwrap();
            fs::write(
                d.join("dm/name"),
                format!("{}\n", crate::init::ISO_ROOT_MAPPING),
            )
            .unwrap();
            fs::create_dir_all(d.join("slaves").join(s)).unwrap();
        }
        Medium {
            cmdline: "ro rke2.roothash=ab rke2.root=iso".into(),
            sys: t.join("sys"),
            dev: t.join("dev"),
        }
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("dev")).unwrap();
        fs::create_dir_all(t.path().join("sys/class/block")).unwrap();
        t
    }

    #[test]
    fn reads_the_area_of_the_boot_medium() {
        if !have_xorriso() {
            return;
        }
        let cfg = b"apiVersion: rke2-image/v1\nkind: NodeConfig\n";
        let full = iso_with(&embed::encode(cfg, 64 << 10).unwrap());
        let empty = iso_with(&embed::encode(b"", 64 << 10).unwrap());
        let t = tree();
        // sda: another customized ISO; sr0 carries the root mapping and wins.
        let m = medium(
            t.path(),
            &[("sda", full.clone()), ("sr0", empty.clone())],
            Some("sr0"),
        );
        assert_eq!(m.fetch().unwrap(), None);
        let t = tree();
        let m = medium(
            t.path(),
            &[("sda", empty.clone()), ("sr0", full.clone())],
            Some("sr0"),
        );
        let f = m.fetch().unwrap().unwrap();
        assert_eq!(f.bytes, cfg);
        assert!(f.origin.contains("/rke2/config.img on ") && f.origin.ends_with("sr0"));
        // No mapping: the whole disks in order; a blank disk is skipped.
        let t = tree();
        let m = medium(
            t.path(),
            &[("sda", vec![0u8; 64 << 10]), ("sr0", full.clone())],
            None,
        );
        assert_eq!(m.fetch().unwrap().unwrap().bytes, cfg);
        // Not a live ISO boot: never looked at.
        let mut m = m;
        m.cmdline = "ro rke2.roothash=ab".into();
        assert_eq!(m.fetch().unwrap(), None);
    }

    #[test]
    fn a_damaged_area_is_an_error() {
        if !have_xorriso() {
            return;
        }
        let mut area = embed::encode(b"a: 1\n", 64 << 10).unwrap();
        area[embed::HEADER_BYTES] ^= 1;
        let t = tree();
        let m = medium(t.path(), &[("sr0", iso_with(&area))], Some("sr0"));
        let e = m.fetch().unwrap_err().to_string();
        assert!(e.contains("SHA-256") && e.contains("sr0"), "{e}");
        // No header at all: named too, not taken for "empty".
        let t = tree();
        let m = medium(t.path(), &[("sr0", iso_with(&[0u8; 4096]))], Some("sr0"));
        let e = m.fetch().unwrap_err().to_string();
        assert!(e.contains("no RKE2CFG header"), "{e}");
    }
}
