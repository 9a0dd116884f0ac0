//! Kernel command-line keys written by the builder into the loader entry and read on the node.

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

/// One parsed `key=value` (or bare `key`) token of a kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
}

/// Splits a kernel command line the way the kernel does: whitespace separates parameters,
/// double quotes group a value that contains spaces (the quotes are removed).
pub fn parse(cmdline: &str) -> Vec<Param<'_>> {
    let mut out = Vec::new();
    let bytes = cmdline.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut in_quote = false;
        while i < bytes.len() && (in_quote || !bytes[i].is_ascii_whitespace()) {
            if bytes[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let token = &cmdline[start..i];
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v.trim_matches('"'))),
            None => (token.trim_matches('"'), None),
        };
        out.push(Param { key, value });
    }
    out
}

/// The value of the last occurrence of `key` (the kernel's own rule: later wins).
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    parse(cmdline)
        .into_iter()
        .rev()
        .find(|p| p.key == key)
        .map(|p| p.value.unwrap_or(""))
}

/// Whether `key` is present at all (with or without a value).
pub fn has(cmdline: &str, key: &str) -> bool {
    parse(cmdline).iter().any(|p| p.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_and_last_wins() {
        let c = "quiet a=1 b=\"x y\" a=2 rke2.debug";
        assert_eq!(get(c, "a"), Some("2"));
        assert_eq!(get(c, "b"), Some("x y"));
        assert_eq!(get(c, "rke2.debug"), Some(""));
        assert!(has(c, "quiet"));
        assert_eq!(get(c, "missing"), None);
    }
}
