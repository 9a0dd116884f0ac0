//! What goes onto the EFI system partition: systemd-boot, one unified kernel image per slot
//! (a Boot Loader Specification type #2 entry, built by [`crate::uki`], carrying the kernel
//! command line), and the build manifest. The FAT32 filesystem itself is written by
//! [`crate::fat`]. Type #1 entries are only parsed (`inspect` of older images).

use rke2_image_contract::cmdline;

use crate::definition::SelinuxMode;
use crate::tree::Blob;

/// The kernel command line: our keys first, then security settings, then the definition's
/// additions (so an operator can add, e.g., `console=` but the verity and security keys are
/// always present; the kernel's last-wins rule is why additions cannot silently weaken them:
/// the build refuses additions that override a security key).
pub fn command_line(
    root_hash_hex: &str,
    slot: char,
    fips: bool,
    selinux: SelinuxMode,
    extra: &[String],
) -> String {
    let mut parts: Vec<String> = vec![
        format!("{}={root_hash_hex}", cmdline::ROOT_HASH),
        format!("{}={slot}", cmdline::SLOT),
        "ro".into(),
        // rke2-init owns every mount; systemd must not auto-mount partitions it discovers on
        // the boot disk (the ESP, the empty B slot, the state partition).
        "systemd.gpt_auto=0".into(),
    ];
    if fips {
        parts.push("fips=1".into());
    }
    match selinux {
        SelinuxMode::Enforcing => {
            parts.extend(["security=selinux", "selinux=1", "enforcing=1"].map(String::from))
        }
        SelinuxMode::Permissive => {
            parts.extend(["security=selinux", "selinux=1", "enforcing=0"].map(String::from))
        }
        SelinuxMode::Disabled => parts.push("selinux=0".into()),
    }
    parts.extend(extra.iter().cloned());
    parts.join(" ")
}

/// Keys the definition's `kernel.cmdline` may not set: they are the image's security and
/// integrity settings and are derived from `security:` and the build itself.
pub const RESERVED_KEYS: &[&str] = &[
    cmdline::ROOT_HASH,
    cmdline::SLOT,
    "fips",
    "security",
    "selinux",
    "enforcing",
    "lsm",
    "init",
    "rdinit",
];

pub fn reserved_key(param: &str) -> Option<&'static str> {
    let key = param.split('=').next().unwrap_or(param);
    RESERVED_KEYS.iter().copied().find(|k| *k == key)
}

/// systemd-boot's loader.conf: boot the image's entry at once (a type #2 entry's id is its
/// file name, `<name>-<version>-<slot>.efi`), and no editor: without Secure Boot, systemd-boot
/// would let the menu change a UKI's command line and with it the root hash.
pub fn loader_conf(name: &str) -> String {
    format!("default {name}-*\ntimeout 0\neditor no\nconsole-mode keep\n")
}

/// A parsed loader entry (for `inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParsedEntry {
    pub file: String,
    pub title: String,
    pub version: String,
    pub linux: String,
    pub initrd: Vec<String>,
    pub options: String,
}

pub fn parse_entry(file: &str, text: &str) -> ParsedEntry {
    let mut e = ParsedEntry {
        file: file.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let v = v.trim().to_string();
        match k {
            "title" => e.title = v,
            "version" => e.version = v,
            "linux" => e.linux = v,
            "initrd" => e.initrd.push(v),
            "options" => {
                if !e.options.is_empty() {
                    e.options.push(' ');
                }
                e.options.push_str(&v)
            }
            _ => {}
        }
    }
    e
}

/// Every file of the ESP, sorted by path (the FAT writer lays them out in this order).
pub struct EspContent {
    pub files: Vec<(String, Blob)>,
}

impl EspContent {
    pub fn new() -> EspContent {
        EspContent { files: Vec::new() }
    }

    pub fn add(&mut self, path: impl Into<String>, blob: Blob) {
        self.files.push((path.into(), blob));
    }

    pub fn sorted(mut self) -> Vec<(String, Blob)> {
        self.files.sort_by(|a, b| a.0.cmp(&b.0));
        self.files
    }
}

impl Default for EspContent {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_security_settings() {
        let c = command_line(
            "ab",
            'a',
            true,
            SelinuxMode::Enforcing,
            &["console=ttyS0".into()],
        );
        assert_eq!(c, "rke2.roothash=ab rke2.slot=a ro systemd.gpt_auto=0 fips=1 security=selinux selinux=1 enforcing=1 console=ttyS0");
        let c = command_line("ab", 'b', false, SelinuxMode::Permissive, &[]);
        assert!(c.ends_with("security=selinux selinux=1 enforcing=0"));
        assert!(!c.contains("fips"));
        assert!(command_line("ab", 'a', false, SelinuxMode::Disabled, &[]).ends_with("selinux=0"));
    }

    #[test]
    fn reserved_keys() {
        assert_eq!(reserved_key("enforcing=0"), Some("enforcing"));
        assert_eq!(reserved_key("rke2.roothash=00"), Some("rke2.roothash"));
        assert_eq!(reserved_key("console=ttyS0"), None);
    }

    #[test]
    fn type1_entry_parses() {
        let e = parse_entry(
            "x.conf",
            "title t\nversion 1.0\nlinux /rke2/a/vmlinuz\ninitrd /rke2/a/initrd.zst\noptions a=1 b\n",
        );
        assert_eq!(e.linux, "/rke2/a/vmlinuz");
        assert_eq!(e.initrd, vec!["/rke2/a/initrd.zst".to_string()]);
        assert_eq!(e.options, "a=1 b");
        assert_eq!(e.version, "1.0");
    }

    #[test]
    fn loader_conf_has_no_editor() {
        let c = loader_conf("node");
        assert!(c.lines().any(|l| l == "editor no"));
        assert!(c.lines().any(|l| l == "default node-*"));
    }
}
