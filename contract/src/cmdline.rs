//! Kernel command-line keys written by the builder into the loader entry and read on the node,
//! and the kernel's own splitting rule ([`parse`]), shared by the builder, `inspect` and
//! `rke2-init` so all three see the parameters the kernel sees.

/// Hex sha256 root hash of the active root slot's dm-verity tree. Without it `rke2-init`
/// refuses to boot.
pub const ROOT_HASH: &str = "rke2.roothash";
/// Active root slot: `a` or `b`.
pub const SLOT: &str = "rke2.slot";
/// Drop to a shell instead of rebooting when `rke2-init` fails.
pub const DEBUG: &str = "rke2.debug";
/// Seconds `rke2-init` waits for the boot disk to appear.
pub const DEVICE_TIMEOUT: &str = "rke2.device_timeout";
/// URL of the node configuration for `rke2-firstboot`.
pub const CONFIG_URL: &str = "rke2.config.url";
/// Where the root comes from: absent or [`ROOT_DISK`] for the `root-<slot>` partitions of the
/// boot disk; [`ROOT_INITRAMFS`] for a network (PXE) boot, where the root and its hash tree are
/// the initramfs files `/rke2-root/root.img` and `/rke2-root/root.verity` (the `rootfs.img` of
/// the `pxe` output). Either way the root is opened through dm-verity with [`ROOT_HASH`]; there
/// is no unverified mode.
///
/// [`ROOT_ISO`] is the live boot of the `iso` output: the root and its hash tree are the
/// files [`ISO_ROOT_FILE`] and [`ISO_VERITY_FILE`] of the ISO 9660 medium, found by reading
/// every whole block device (a CD drive such as `sr0`, or a disk the ISO was written to with
/// `dd`) and mapped by their extents (dm-linear) under dm-verity. State as for
/// [`ROOT_INITRAMFS`].
pub const ROOT_SOURCE: &str = "rke2.root";
pub const ROOT_DISK: &str = "disk";
pub const ROOT_INITRAMFS: &str = "initramfs";
pub const ROOT_ISO: &str = "iso";
/// With [`ROOT_INITRAMFS`] or [`ROOT_ISO`]: the whole block device that holds the state filesystem, by its
/// kernel name (`/dev/vdb`: the initrd runs no udev, so there are no `/dev/disk/by-*` links). A blank device (its first MiB all zeros) is
/// formatted on first boot; one that already carries the state filesystem label is reused;
/// anything else stops the boot. Absent: state lives in RAM and is lost at power-off.
pub const STATE_DISK: &str = "rke2.state_disk";
/// Files of the initramfs that carry the root for [`ROOT_INITRAMFS`].
pub const INITRAMFS_ROOT_FILE: &str = "/rke2-root/root.img";
pub const INITRAMFS_VERITY_FILE: &str = "/rke2-root/root.verity";
/// Files of the ISO 9660 medium that carry the root for [`ROOT_ISO`]. 8.3 names, so the ISO
/// 9660 directory (not only the Rock Ridge one) spells them the same way in any case.
pub const ISO_ROOT_FILE: &str = "/rke2/root.img";
pub const ISO_VERITY_FILE: &str = "/rke2/verity.img";
/// The embedded manifest on the medium (the same bytes as on the disk image's ESP).
pub const ISO_MANIFEST_FILE: &str = "/rke2/manifest.json";
/// The raw image's head on the medium: protective MBR, primary GPT and the gap up to the first
/// partition (what the installer resizes and writes; `rke2_firstboot::install::write`).
pub const ISO_HEAD_FILE: &str = "/rke2/head.img";
/// The raw image's ESP partition, byte for byte (the disk UKIs, not the live one).
pub const ISO_ESP_FILE: &str = "/rke2/esp.img";
/// Install the image onto a disk: `rke2.install=<target>` (a `/dev` path, `/dev/disk/by-id/...`,
/// `wwn:<wwn>`, `serial:<serial>` or `auto`). Overrides the node configuration's
/// `install.target`; bare `rke2.install` installs onto the configuration's target (see
/// `rke2_firstboot::install`).
pub const INSTALL: &str = "rke2.install";
/// `rke2.install.wipe=1` lets the installer overwrite a disk holding partitions or filesystem
/// signatures (`0` forbids it); overrides the configuration's `install.wipe`.
pub const INSTALL_WIPE: &str = "rke2.install.wipe";

/// x86 `COMMAND_LINE_SIZE`: the kernel keeps at most this many bytes, the terminating NUL
/// included, and silently cuts the rest (which would drop the security keys written last).
pub const KERNEL_MAX: usize = 2048;

/// One parsed `key=value` (or bare `key`) parameter of a kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// The kernel's `isspace()` on ASCII (`\v` included, unlike `char::is_ascii_whitespace`).
/// The kernel also counts byte 0xA0 as a space; lines we write and read are ASCII (the builder
/// refuses anything else), so a non-ASCII line is split at ASCII spaces only.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits a kernel command line exactly as the kernel's `next_arg()` (lib/cmdline.c) does: a
/// parameter runs to the next space outside double quotes; a leading quote and one closing
/// quote at the end are removed; the key ends at the first `=` after the first byte; a value
/// starting with a quote loses it and a trailing quote. `--` ends the kernel's parameters (what
/// follows goes to init) and is returned as a parameter with the key `--`.
pub fn parse(line: &str) -> Vec<Param<'_>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() && is_space(b[pos]) {
        pos += 1;
    }
    while pos < b.len() {
        let mut start = pos;
        let mut in_quote = false;
        let mut quoted = false;
        if b[start] == b'"' {
            start += 1;
            in_quote = true;
            quoted = true;
        }
        // `i` and `equals` are offsets from `start`, as in the kernel; equals == 0 means none
        // (a `=` as the very first byte is not a separator there either).
        let mut i = 0;
        let mut equals = 0;
        while start + i < b.len() {
            let c = b[start + i];
            if is_space(c) && !in_quote {
                break;
            }
            if equals == 0 && c == b'=' {
                equals = i;
            }
            if c == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let end = start + i;
        // The kernel writes NULs over the quotes it drops; the same ranges as slices.
        let last_is_quote = i > 0 && b[end - 1] == b'"';
        let (key, value) = if equals == 0 {
            let kend = if quoted && last_is_quote {
                end - 1
            } else {
                end
            };
            (start..kend, None)
        } else {
            let mut vstart = start + equals + 1;
            let mut vend = end;
            if vstart < b.len() && b[vstart] == b'"' && vstart < end {
                vstart += 1;
                if last_is_quote {
                    vend = end - 1;
                }
            }
            if quoted && last_is_quote {
                vend = end - 1;
            }
            (start..start + equals, Some(vstart..vend.max(vstart)))
        };
        let key = &line[key.start..key.end.max(key.start)];
        let value = value.map(|r| &line[r]);
        out.push(Param { key, value });
        pos = if end < b.len() { end + 1 } else { end };
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
    }
    out
}

/// The kernel's parameter-name comparison (`parameq`): `-` and `_` are the same.
pub fn normalize_key(key: &str) -> String {
    key.replace('-', "_")
}

/// The value of the last occurrence of `key` before `--` (the kernel's rule: later wins).
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    kernel_params(cmdline)
        .into_iter()
        .rev()
        .find(|p| p.key == key)
        .map(|p| p.value.unwrap_or(""))
}

/// Whether `key` is present at all (with or without a value) before `--`.
pub fn has(cmdline: &str, key: &str) -> bool {
    kernel_params(cmdline).iter().any(|p| p.key == key)
}

/// The parameters the kernel itself sees: those before the first `--`.
fn kernel_params(cmdline: &str) -> Vec<Param<'_>> {
    let mut v = parse(cmdline);
    if let Some(i) = v.iter().position(|p| p.key == "--" && p.value.is_none()) {
        v.truncate(i);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(line: &str) -> Vec<(&str, Option<&str>)> {
        parse(line).into_iter().map(|p| (p.key, p.value)).collect()
    }

    #[test]
    fn parses_quotes_and_last_wins() {
        let c = "quiet a=1 b=\"x y\" a=2 rke2.debug";
        assert_eq!(get(c, "a"), Some("2"));
        assert_eq!(get(c, "b"), Some("x y"));
        assert_eq!(get(c, "rke2.debug"), Some(""));
        assert!(has(c, "quiet"));
        assert_eq!(get(c, "missing"), None);
    }

    /// Cases worked through lib/cmdline.c's next_arg() by hand.
    #[test]
    fn kernel_quoting() {
        // A quoted whole parameter: the key is what is inside.
        assert_eq!(kv("\"enforcing=0\""), [("enforcing", Some("0"))]);
        assert_eq!(
            kv("\"init=/bin/sh\" x"),
            [("init", Some("/bin/sh")), ("x", None)]
        );
        assert_eq!(kv("\"selinux\""), [("selinux", None)]);
        // Quotes in the middle of a key do not end it; spaces inside quotes do not split.
        assert_eq!(kv("a\"b c\"=d"), [("a\"b c\"", Some("d"))]);
        assert_eq!(kv("k=\"v w\""), [("k", Some("v w"))]);
        // An unterminated quote swallows the rest of the line.
        assert_eq!(kv("k=\"v fips=0"), [("k", Some("v fips=0"))]);
        assert_eq!(kv("\" fips=0"), [(" fips", Some("0"))]);
        // `=` first is not a separator; the next one is.
        assert_eq!(kv("=a=b"), [("=a", Some("b"))]);
        assert_eq!(kv("=a"), [("=a", None)]);
        // \v and \f separate, leading and trailing spaces vanish.
        assert_eq!(
            kv(" a\x0bb\x0c c "),
            [("a", None), ("b", None), ("c", None)]
        );
        assert_eq!(kv("k="), [("k", Some(""))]);
        assert_eq!(kv("k=\""), [("k", Some(""))]);
        assert_eq!(kv("\""), [("", None)]);
        assert!(parse("").is_empty());
        assert!(parse("   ").is_empty());
    }

    #[test]
    fn double_dash_ends_kernel_params() {
        let c = "a=1 -- a=2 rke2.debug";
        assert_eq!(get(c, "a"), Some("1"));
        assert!(!has(c, "rke2.debug"));
        assert_eq!(parse(c).len(), 4);
    }
}
