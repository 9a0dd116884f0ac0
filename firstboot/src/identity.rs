//! This machine's identity: MAC addresses, DMI product UUID and serial, hostname.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("--identity {0:?}: expected KEY=VALUE with KEY one of mac, uuid, serial, hostname")]
    BadArg(String),
    #[error(
        "--identity mac={0:?}: not a MAC address (expected six hex pairs like 52:54:00:12:34:56)"
    )]
    BadMac(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Lower-case, colon-separated.
    pub macs: BTreeSet<String>,
    /// Lower-case.
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub hostname: Option<String>,
}

/// Normalises a MAC address to `aa:bb:cc:dd:ee:ff` (accepts `-` separators and upper case).
pub fn normalize_mac(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Some(s)
    } else {
        None
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    // Firmware fills unset DMI fields with placeholders; they identify nothing.
    let placeholder = s.is_empty()
        || s.eq_ignore_ascii_case("none")
        || s.eq_ignore_ascii_case("not specified")
        || s.eq_ignore_ascii_case("to be filled by o.e.m.")
        || s.eq_ignore_ascii_case("default string")
        || s.bytes().all(|b| b == b'0' || b == b'-');
    (!placeholder).then(|| s.to_string())
}

impl Identity {
    /// Reads the identity from a sysfs tree (`/sys`) and procfs tree (`/proc`).
    pub fn probe(sys: &Path, proc: &Path) -> Identity {
        let mut id = Identity::default();
        if let Ok(rd) = fs::read_dir(sys.join("class/net")) {
            let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            names.sort();
            for dev in names {
                if dev.file_name().is_some_and(|n| n == "lo") {
                    continue;
                }
                if let Some(mac) = read_trim(&dev.join("address")).and_then(|m| normalize_mac(&m)) {
                    id.macs.insert(mac);
                }
            }
        }
        id.uuid = read_trim(&sys.join("class/dmi/id/product_uuid")).map(|u| u.to_ascii_lowercase());
        id.serial = read_trim(&sys.join("class/dmi/id/product_serial"));
        id.hostname = read_trim(&proc.join("sys/kernel/hostname"))
            .filter(|h| h != "localhost" && h != "(none)");
        id
    }

    /// Builds an identity from `KEY=VALUE` arguments (`mac` may repeat).
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Identity, IdentityError> {
        let mut id = Identity::default();
        for a in args {
            // Accept comma-separated lists too: --identity mac=..,hostname=..
            for part in a.as_ref().split(',').filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| IdentityError::BadArg(part.to_string()))?;
                match k {
                    "mac" => {
                        id.macs.insert(
                            normalize_mac(v).ok_or_else(|| IdentityError::BadMac(v.to_string()))?,
                        );
                    }
                    "uuid" => id.uuid = Some(v.to_ascii_lowercase()),
                    "serial" => id.serial = Some(v.to_string()),
                    "hostname" => id.hostname = Some(v.to_string()),
                    _ => return Err(IdentityError::BadArg(part.to_string())),
                }
            }
        }
        Ok(id)
    }

    /// The first MAC (sorted), for `${mac}` substitution.
    pub fn first_mac(&self) -> Option<&str> {
        self.macs.iter().next().map(String::as_str)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let macs: Vec<&str> = self.macs.iter().map(String::as_str).collect();
        write!(
            f,
            "mac=[{}] uuid={} serial={} hostname={}",
            macs.join(","),
            self.uuid.as_deref().unwrap_or("(none)"),
            self.serial.as_deref().unwrap_or("(none)"),
            self.hostname.as_deref().unwrap_or("(none)")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fake_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("sys");
        let p = t.path().join("proc");
        for (dev, mac) in [
            ("lo", "00:00:00:00:00:00"),
            ("eth0", "52:54:00:AB:CD:EF"),
            ("eth1", "52:54:00:00:00:02"),
        ] {
            fs::create_dir_all(s.join("class/net").join(dev)).unwrap();
            fs::write(
                s.join("class/net").join(dev).join("address"),
                format!("{mac}\n"),
            )
            .unwrap();
        }
        fs::create_dir_all(s.join("class/dmi/id")).unwrap();
        fs::write(
            s.join("class/dmi/id/product_uuid"),
            "4C4C4544-0042-1234-8057-B2C04F5A1234\n",
        )
        .unwrap();
        fs::write(s.join("class/dmi/id/product_serial"), "Not Specified\n").unwrap();
        fs::create_dir_all(p.join("sys/kernel")).unwrap();
        fs::write(p.join("sys/kernel/hostname"), "node-a\n").unwrap();
        let id = Identity::probe(&s, &p);
        assert_eq!(
            id.macs.iter().cloned().collect::<Vec<_>>(),
            vec!["52:54:00:00:00:02", "52:54:00:ab:cd:ef"]
        );
        assert_eq!(
            id.uuid.as_deref(),
            Some("4c4c4544-0042-1234-8057-b2c04f5a1234")
        );
        assert_eq!(id.serial, None);
        assert_eq!(id.hostname.as_deref(), Some("node-a"));
    }

    #[test]
    fn parses_args() {
        let id = Identity::from_args(&["mac=52-54-00-AA-BB-CC,serial=S1", "hostname=h"]).unwrap();
        assert!(id.macs.contains("52:54:00:aa:bb:cc"));
        assert_eq!(id.serial.as_deref(), Some("S1"));
        assert!(Identity::from_args(&["mac=xyz"]).is_err());
        assert!(Identity::from_args(&["color=red"]).is_err());
    }
}
