//! The state filesystem: which directories live there, their SELinux labels, and how the
//! running system's paths map onto it.

use rke2_image_contract::paths;
use std::collections::BTreeMap;

/// Parses the state-labels file ([`paths::STATE_LABELS`]): `<state path> <context>` lines.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut w = line.split_whitespace();
        let (Some(path), Some(ctx), None) = (w.next(), w.next(), w.next()) else {
            return Err(format!(
                "{} line {}: expected `<path> <context>`, got {line:?}",
                paths::STATE_LABELS,
                i + 1
            ));
        };
        // What matchpathcon/selabel_lookup print for paths the policy leaves unlabelled.
        if ctx == "<<none>>" {
            continue;
        }
        if ctx.split(':').count() < 3 {
            return Err(format!(
                "{} line {}: {ctx:?} is not an SELinux context (user:role:type[:level])",
                paths::STATE_LABELS,
                i + 1
            ));
        }
        out.insert(path.trim_end_matches('/').to_string(), ctx.to_string());
    }
    Ok(out)
}

/// How a directory of the running system is backed by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// overlayfs: the image's directory below, `<dir>/upper` + `<dir>/work` on state.
    Overlay,
    /// bind mount of `<dir>` on state, seeded from the image on first use.
    Persistent,
}

/// Directories of the running system backed by state, in mount order.
pub const MOUNTS: [(&str, Backing); 6] = [
    ("etc", Backing::Overlay),
    ("opt", Backing::Overlay),
    ("var", Backing::Persistent),
    ("root", Backing::Persistent),
    ("home", Backing::Persistent),
    ("srv", Backing::Persistent),
];

/// Whether a 2 KiB read from offset 1024 of a block device is an ext2/3/4 superblock.
pub fn is_ext4_superblock(sb: &[u8]) -> bool {
    sb.len() >= 58 && sb[56] == 0x53 && sb[57] == 0xef
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_errors() {
        let m = parse_labels(
            "# x\n. system_u:object_r:var_run_t:s0\netc/upper/ system_u:object_r:etc_t:s0\n",
        )
        .unwrap();
        assert_eq!(m["."], "system_u:object_r:var_run_t:s0");
        assert_eq!(m["etc/upper"], "system_u:object_r:etc_t:s0");
        assert!(!parse_labels("srv <<none>>\n").unwrap().contains_key("srv"));
        assert!(parse_labels("etc\n").unwrap_err().contains("line 1"));
        assert!(parse_labels("etc etc_t\n")
            .unwrap_err()
            .contains("not an SELinux context"));
    }

    #[test]
    fn every_state_dir_is_declared() {
        let dirs: Vec<&str> = paths::STATE_DIRS.iter().map(|d| d.0).collect();
        for (m, b) in MOUNTS {
            assert!(dirs.contains(&m), "{m}");
            if b == Backing::Overlay {
                assert!(dirs.contains(&format!("{m}/upper").as_str()));
                assert!(dirs.contains(&format!("{m}/work").as_str()));
            }
        }
    }

    /// Oracle: mkfs.ext4 output.
    #[test]
    fn detects_ext4() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("fs");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let b = std::fs::read(&img).unwrap();
        assert!(is_ext4_superblock(&b[1024..3072]));
        assert!(!is_ext4_superblock(&[0u8; 2048]));
    }
}
