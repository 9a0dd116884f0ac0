//! A/B updates: the update bundle the builder writes (`--format update`) and the node command
//! (`rke2-update`) applies, the boot facts `rke2-init` hands to the running system, the update
//! policy baked into the image, and the names of the per-slot boot entries on the ESP.
//!
//! ## The bundle: `<name>-<version>.update`
//!
//! An uncompressed POSIX tar (ustar, every header deterministic: mode 0444, uid/gid 0, mtime =
//! the build epoch), so it streams from a file or an HTTPS response and `tar tvf` lists it. The
//! members come in exactly this order ([`MEMBERS`] after the first two):
//!
//! | member            | what                                                                    |
//! |-------------------|-------------------------------------------------------------------------|
//! | `update.json`     | [`UpdateInfo`]: image, version, architecture, root hash, every member's size and sha256 |
//! | `update.json.sig` | 64-byte ed25519 signature of `update.json`'s exact bytes (`openssl pkeyutl -verify -rawin`) |
//! | `manifest.json`   | the image's build manifest (the copy embedded in its ESP)               |
//! | `uki-a.efi`       | the unified kernel image for slot a (`rke2.slot=a`, the root hash)       |
//! | `uki-b.efi`       | the same for slot b                                                     |
//! | `verity.img`      | the dm-verity hash device (superblock + tree) of the root               |
//! | `root.img`        | the EROFS root                                                          |
//!
//! The signature covers `update.json`, which pins every other member by sha256, so a reader
//! checks the signature first and every member as it streams past; nothing unsigned is ever
//! acted on. Two UKIs because the slot is part of the signed command line: the node installs
//! the one for the slot it writes.

use serde::{Deserialize, Serialize};

/// `update.json`'s `schema`.
pub const SCHEMA: &str = "rke2-image.io/update/v1";
/// File suffix of the bundle (`<name>-<version>.update`).
pub const SUFFIX: &str = "update";
/// The signed header, first member.
pub const INFO: &str = "update.json";
/// Its ed25519 signature (64 bytes), second member.
pub const SIGNATURE: &str = "update.json.sig";
pub const MANIFEST: &str = "manifest.json";
pub const UKI_A: &str = "uki-a.efi";
pub const UKI_B: &str = "uki-b.efi";
pub const VERITY: &str = "verity.img";
pub const ROOT: &str = "root.img";
/// The members [`UpdateInfo::members`] lists, in bundle order (after [`INFO`] and [`SIGNATURE`]).
pub const MEMBERS: [&str; 5] = [MANIFEST, UKI_A, UKI_B, VERITY, ROOT];
/// Architecture name (the Discoverable Partitions Specification's) of the images we build.
pub const ARCH_X86_64: &str = "x86-64";

/// The UKI member for `slot`.
pub fn uki_member(slot: char) -> &'static str {
    if slot == 'b' {
        UKI_B
    } else {
        UKI_A
    }
}

/// `update.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateInfo {
    /// [`SCHEMA`].
    pub schema: String,
    /// The image name (`name:` of the definition); a node refuses another image's bundle.
    pub image: String,
    /// The image version (`version:`); compared with [`compare_versions`].
    pub version: String,
    /// [`ARCH_X86_64`].
    pub architecture: String,
    /// The build epoch (every timestamp in the image).
    pub epoch: u64,
    /// Lower-case hex sha256 root hash of `root.img` under `verity.img`.
    pub root_hash: String,
    /// Bytes of the EROFS root (`root.img`'s size; what the slot's root partition must hold).
    pub root_size: u64,
    /// Bytes of the hash device (`verity.img`'s size).
    pub verity_size: u64,
    /// [`MEMBERS`], in that order, each with its size and sha256.
    pub members: Vec<Member>,
    /// The kernel command line inside each UKI (slot a, then slot b).
    pub cmdlines: Vec<SlotCmdline>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotCmdline {
    pub slot: String,
    pub cmdline: String,
}

impl UpdateInfo {
    /// The listed member `name`, if any.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Inside the image: the update policy (`usr/share/rke2-image/update/policy.json`), from the
/// definition's `update:` section.
pub const POLICY: &str = "usr/share/rke2-image/update/policy.json";
/// Inside the image: the public keys (SubjectPublicKeyInfo PEM, ed25519) a bundle's signature
/// may verify against, one `*.pem` each: `signing.key`'s public half (`image.pem`) and the
/// definition's `update.trustedKeys` (`trusted-<n>.pem`).
pub const KEYS_DIR: &str = "usr/share/rke2-image/update/keys";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Boot tries a new slot gets (systemd-boot's `+N` counter).
    pub tries: u32,
    /// How long the health check waits for RKE2 to become healthy on a new slot.
    pub health_timeout_seconds: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            tries: 3,
            health_timeout_seconds: 900,
        }
    }
}

/// Written by `rke2-init` before it switches root: how this boot found its root, for the node
/// programs (`rke2-update`). Absent on a system not booted by `rke2-init`.
pub const BOOT_INFO: &str = "run/rke2-image/boot.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootInfo {
    /// `disk`, `iso` or `initramfs` (the `rke2.root=` source). Updates need `disk`.
    pub source: String,
    /// The running slot (`a` or `b`).
    pub slot: String,
    /// The running root hash (from the command line).
    pub root_hash: String,
    /// The boot disk's device node (`/dev/vda`); empty unless `source` is `disk`.
    #[serde(default)]
    pub disk: String,
    /// Partition device nodes of the boot disk by GPT label (`esp`, `root-a`, `root-a-verity`,
    /// `root-b`, `root-b-verity`, `state`), sorted by label.
    #[serde(default)]
    pub partitions: Vec<LabelledPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelledPartition {
    pub label: String,
    pub node: String,
    /// The GPT unique partition GUID (upper case).
    pub partuuid: String,
}

impl BootInfo {
    pub fn partition(&self, label: &str) -> Option<&LabelledPartition> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

/// Where the running system mounts the ESP (`efi.mount`, written by `rke2-init`): where
/// `systemd-bless-boot` and `rke2-update` find the boot entries.
pub const ESP_MOUNT: &str = "efi";
/// Directory of the unified kernel images on the ESP (Boot Loader Specification type #2).
pub const ESP_UKI_DIR: &str = "EFI/Linux";

/// A slot's boot entry on the ESP: `EFI/Linux/<name>-<version>-<slot>[+LEFT[-DONE]].efi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub slot: char,
    /// systemd-boot's boot counter: None = no counter (blessed or never counted).
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

/// The state of a slot's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// No counter: blessed (or the image's first entry).
    Good,
    /// Counting, with tries left.
    Pending(u32),
    /// Counter at zero: systemd-boot sorts it last; it boots only when nothing else can.
    Bad,
}

impl Entry {
    /// The file name (without directory).
    pub fn file_name(&self) -> String {
        let counter = match (self.tries_left, self.tries_done) {
            (Some(l), Some(d)) => format!("+{l}-{d}"),
            (Some(l), None) => format!("+{l}"),
            _ => String::new(),
        };
        format!("{}-{}-{}{counter}.efi", self.name, self.version, self.slot)
    }

    /// The path on the ESP.
    pub fn esp_path(&self) -> String {
        format!("{ESP_UKI_DIR}/{}", self.file_name())
    }

    pub fn state(&self) -> EntryState {
        match self.tries_left {
            None => EntryState::Good,
            Some(0) => EntryState::Bad,
            Some(n) => EntryState::Pending(n),
        }
    }

    /// Parses a file name of `image` (the image name, which may itself contain `-`). None for
    /// a file that is not one of this image's slot entries.
    pub fn parse(image: &str, file: &str) -> Option<Entry> {
        let stem = file.strip_suffix(".efi")?;
        let rest = stem.strip_prefix(image)?.strip_prefix('-')?;
        // The counter: `+LEFT` or `+LEFT-DONE` at the end (systemd-boot's syntax).
        let (body, left, done) = match rest.rsplit_once('+') {
            Some((body, counter)) => {
                let (l, d) = match counter.split_once('-') {
                    Some((l, d)) => (l, Some(d)),
                    None => (counter, None),
                };
                let l: u32 = l.parse().ok()?;
                let d: Option<u32> = match d {
                    Some(d) => Some(d.parse().ok()?),
                    None => None,
                };
                (body, Some(l), d)
            }
            None => (rest, None, None),
        };
        let (version, slot) = body.rsplit_once('-')?;
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        if version.is_empty() {
            return None;
        }
        Some(Entry {
            name: image.to_string(),
            version: version.to_string(),
            slot,
            tries_left: left,
            tries_done: done,
        })
    }
}

/// Compares two image versions the way systemd-boot orders entries (and `sort -V` roughly):
/// runs of digits compare as numbers, everything else byte by byte; a `~` sorts before
/// anything (a pre-release: `2.0~rc1` < `2.0`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                i += 1;
                j += 1;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let si = i;
                while a.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let sj = j;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                let na = trim_zeros(&a[si..i]);
                let nb = trim_zeros(&b[sj..j]);
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            (Some(x), Some(y)) => {
                // A digit run sorts after a non-digit (1.0.1 > 1.0a is not meaningful; keep total).
                let o = match (x.is_ascii_digit(), y.is_ascii_digit()) {
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
                i += 1;
                j += 1;
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn entry_names_round_trip() {
        for (file, slot, left, done) in [
            ("rke2-node-1.2.0-a.efi", 'a', None, None),
            ("rke2-node-1.2.0-b+3.efi", 'b', Some(3), None),
            ("rke2-node-1.2.0-b+2-1.efi", 'b', Some(2), Some(1)),
            ("rke2-node-1.2.0-b+0-3.efi", 'b', Some(0), Some(3)),
        ] {
            let e = Entry::parse("rke2-node", file).expect(file);
            assert_eq!((e.slot, e.tries_left, e.tries_done), (slot, left, done));
            assert_eq!(e.version, "1.2.0");
            assert_eq!(e.file_name(), file);
        }
        assert_eq!(
            Entry::parse("rke2-node", "rke2-node-1-b+0-3.efi").map(|e| e.state()),
            Some(EntryState::Bad)
        );
        assert_eq!(
            Entry::parse("rke2-node", "rke2-node-1-b+2-1.efi").map(|e| e.state()),
            Some(EntryState::Pending(2))
        );
        for other in [
            "other-1-a.efi",
            "rke2-node-1-c.efi",
            "rke2-node-a.efi",
            "rke2-node-1-a+x.efi",
            "rke2-node-1-a.conf",
        ] {
            assert_eq!(Entry::parse("rke2-node", other), None, "{other}");
        }
    }

    #[test]
    fn versions_compare_like_systemd_boot() {
        assert_eq!(compare_versions("2", "10"), Less);
        assert_eq!(compare_versions("1.2.0", "1.2.0"), Equal);
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Greater);
        assert_eq!(compare_versions("2.0~rc1", "2.0"), Less);
        assert_eq!(compare_versions("1.0", "1.0.1"), Less);
        assert_eq!(compare_versions("007", "7"), Equal);
    }

    #[test]
    fn info_rejects_unknown_fields() {
        let i = UpdateInfo {
            schema: SCHEMA.into(),
            image: "n".into(),
            version: "1".into(),
            architecture: ARCH_X86_64.into(),
            epoch: 0,
            root_hash: "ab".into(),
            root_size: 1,
            verity_size: 1,
            members: vec![],
            cmdlines: vec![],
        };
        let t = serde_json::to_string(&i).expect("json");
        assert_eq!(serde_json::from_str::<UpdateInfo>(&t).ok(), Some(i));
        let bad = t.replacen('{', "{\"x\":1,", 1);
        assert!(serde_json::from_str::<UpdateInfo>(&bad).is_err());
    }
}
