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
    Ok(BootParams {
        root_hash,
        slot,
        debug,
        device_timeout,
    })
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
