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

/// Keys the definition's `kernel.cmdline` may not set (compared after the kernel's `-`≡`_`):
/// the image's security and integrity settings, derived from `security:` and the build itself,
/// and whatever would replace the init, the root or the boot target (a debug or rescue shell).
pub const RESERVED_KEYS: &[&str] = &[
    "fips",
    "security",
    "selinux",
    "enforcing",
    "checkreqprot",
    "lsm",
    "apparmor",
    "lockdown",
    "module.sig_enforce",
    "init",
    "rdinit",
    "root",
    "rootfstype",
    "rootflags",
    "ro",
    "rw",
    "dm_mod.create",
    "emergency",
    "rescue",
    "single",
    "s",
    "S",
    "b",
];

/// `rke2.*` keys a definition may set: neither weakens a security property (`rke2.debug` does:
/// it opens a shell on failure).
pub const ALLOWED_RKE2_KEYS: &[&str] = &[cmdline::CONFIG_URL, cmdline::DEVICE_TIMEOUT];

/// systemd keys that only change what is logged or shown; every other `systemd.*` and
/// `rd.systemd.*` key is refused (`systemd.unit`, `systemd.debug_shell`, `systemd.gpt_auto`,
/// `systemd.verity*`, `systemd.mask`, `systemd.run`, …).
pub const ALLOWED_SYSTEMD_KEYS: &[&str] = &[
    "systemd.show_status",
    "systemd.log_level",
    "systemd.log_target",
    "systemd.log_color",
    "systemd.log_time",
    "systemd.log_location",
];

/// The reserved key `key` (as the kernel parsed it) stands for, if any.
pub fn reserved_key(key: &str) -> Option<String> {
    let k = cmdline::normalize_key(key);
    let fixed = RESERVED_KEYS.iter().any(|r| cmdline::normalize_key(r) == k);
    let rke2 = k.starts_with("rke2.")
        && !ALLOWED_RKE2_KEYS
            .iter()
            .any(|a| cmdline::normalize_key(a) == k);
    let systemd = (k.starts_with("systemd.") || k.starts_with("rd.systemd."))
        && !ALLOWED_SYSTEMD_KEYS.contains(&k.as_str());
    (fixed || rke2 || systemd).then_some(k)
}

/// Checks one `kernel.cmdline` item of a definition: printable ASCII, exactly one parameter as
/// the kernel splits it (quotes only as `key="value"`), a key that starts with a letter, and no
/// reserved key. The message is the reason and the fix, for the caller to prefix with the file
/// and the key.
pub fn check_item(item: &str) -> Result<(), String> {
    if item.is_empty() {
        return Err("is empty; remove it".into());
    }
    if let Some(c) = item.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{item:?} contains {c:?}; kernel parameters are printable ASCII"
        ));
    }
    if item.contains('"') {
        let quoted_value = item
            .split_once("=\"")
            .filter(|(k, v)| !k.contains('"') && !v.is_empty() && v.find('"') == Some(v.len() - 1));
        if quoted_value.is_none() {
            return Err(format!(
                "{item:?}: double quotes are only allowed around a whole value, as key=\"value with spaces\""
            ));
        }
    } else if item.contains(' ') {
        return Err(format!(
            "{item:?} holds several parameters; give one parameter per list item, or quote a value with spaces as key=\"a b\""
        ));
    }
    let params = cmdline::parse(item);
    let [p] = params.as_slice() else {
        return Err(format!("{item:?} is not exactly one kernel parameter"));
    };
    if p.key == "--" {
        return Err(format!(
            "{item:?} would end the kernel's parameters and hand the rest to init; remove it"
        ));
    }
    let valid_key = p.key.starts_with(|c: char| c.is_ascii_alphabetic())
        && p.key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid_key {
        return Err(format!(
            "{item:?} is not a kernel parameter (`key` or `key=value`, the key starting with a letter); if this was meant as part of the previous item, quote the whole item in YAML, e.g. [\"console=ttyS0,115200\"]"
        ));
    }
    if let Some(k) = reserved_key(p.key) {
        return Err(format!(
            "{item:?} sets `{k}`, which the image reserves (security settings come from `security:`, the root hash, slot, init and boot target from the build); remove it"
        ));
    }
    Ok(())
}

/// Refuses a command line the kernel would cut at `COMMAND_LINE_SIZE` (the terminating NUL
/// included). The line is the UKI's `.cmdline` as the kernel receives it: the stub hands the
/// embedded initrd over through the LINUX_INITRD_MEDIA device path, not as an `initrd=` key.
pub fn check_length(line: &str) -> Result<(), String> {
    if line.len() < cmdline::KERNEL_MAX {
        return Ok(());
    }
    Err(format!(
        "the kernel command line would be {} bytes; the kernel keeps {} (the rest, security keys included, would be lost): shorten kernel.cmdline",
        line.len(),
        cmdline::KERNEL_MAX - 1
    ))
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
        for bad in [
            "enforcing=0",
            "\"enforcing=0\"",
            "rke2.roothash=00",
            "rke2.debug",
            "rke2.slot=b",
            "init=/bin/sh",
            "rdinit=/x",
            "systemd.unit=rescue.target",
            "rd.systemd.unit=emergency.target",
            "systemd.debug-shell",
            "systemd.verity=0",
            "systemd.gpt_auto=1",
            "single",
            "S",
            "module.sig-enforce=0",
        ] {
            assert!(check_item(bad).is_err(), "{bad}");
        }
        for good in [
            "console=ttyS0,115200",
            "rke2.config.url=http://10.0.0.1/x",
            "rke2.device-timeout=60",
            "systemd.log_level=debug",
            "quiet",
            "dyndbg=\"file drivers/* +p\"",
        ] {
            assert_eq!(check_item(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn item_shapes() {
        for bad in [
            "",
            "a b",
            "--",
            "115200",
            "\"a\"=b",
            "k=\"v",
            "\"",
            "k=\"a\"b\"",
            "a=1\tb=2",
            "k=v\u{e9}",
            "-b",
        ] {
            assert!(check_item(bad).is_err(), "{bad:?}");
        }
        let e = check_item("115200").unwrap_err();
        assert!(e.contains("[\"console=ttyS0,115200\"]"), "{e}");
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
