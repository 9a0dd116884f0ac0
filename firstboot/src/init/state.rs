//! The state filesystem: which directories live there, their SELinux labels, and how the
//! running system's paths map onto it.

use rke2_image_contract::{gpt, partitions, paths};
use sha2::{Digest, Sha256};
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

/// The aligned free range after the last partition of `table` (already resized to the
/// disk), or None when it is smaller than `min_bytes`.
pub fn state_range(table: &gpt::Table, align_bytes: u64, min_bytes: u64) -> Option<(u64, u64)> {
    let (first, last) = table.free_tail();
    let align = (align_bytes / table.sector_size).max(1);
    let first = first.div_ceil(align) * align;
    let last = ((last + 1) / align * align).checked_sub(1)?;
    if last < first || (last - first + 1) * table.sector_size < min_bytes {
        return None;
    }
    Some((first, last))
}

/// The state partition's GPT entry; its GUID derives from the disk GUID, so it is the same
/// every time the same image creates it (no randomness on the node).
pub fn state_entry(table: &gpt::Table, range: (u64, u64)) -> Result<gpt::Entry, String> {
    let mut h = Sha256::new();
    h.update(table.disk_guid.0);
    h.update(b"rke2-image state partition");
    let mut g = [0u8; 16];
    g.copy_from_slice(&h.finalize()[..16]);
    Ok(gpt::Entry {
        type_guid: gpt::Guid::parse(partitions::STATE.type_guid).map_err(|e| e.to_string())?,
        guid: gpt::Guid::from_hash(g),
        first_lba: range.0,
        last_lba: range.1,
        attributes: 0,
        name: partitions::STATE.label.to_string(),
    })
}

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

    /// Oracle: sgdisk writes an image-sized table; after growing the file, resizing and
    /// adding the state entry, `sgdisk -v` is clean and reports partition 6 where we put it.
    #[test]
    fn state_partition_fills_grown_disk() {
        use std::process::Command;
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("disk");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        let st = Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+8M",
                "-t",
                &format!("1:{}", partitions::ESP_TYPE),
                "-c",
                "1:esp",
            ])
            .args([
                "-n",
                "2:0:+16M",
                "-t",
                &format!("2:{}", partitions::ROOT_X86_64_TYPE),
                "-c",
                "2:root-a",
            ])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        f.set_len(300 << 20).unwrap();
        let mut g = gpt::Table::read(&f, 300 << 20, 512).unwrap();
        g.resize(300 << 20).unwrap();
        let range = state_range(&g, 1 << 20, 256 << 20).unwrap();
        assert_eq!(range.0, g.get(2).unwrap().last_lba + 1);
        assert_eq!(range.0 % 2048, 0);
        assert_eq!((range.1 + 1) % 2048, 0);
        assert!(state_range(&g, 1 << 20, 280 << 20).is_none());
        let e = state_entry(&g, range).unwrap();
        assert_eq!(e, state_entry(&g, range).unwrap(), "deterministic");
        g.add(6, e).unwrap();
        g.write(&f).unwrap();
        let out = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.contains("No problems found"), "{v}");
        let out = Command::new("sgdisk")
            .args(["-i", "6"])
            .arg(&img)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(info.contains(partitions::VAR_TYPE), "{info}");
        assert!(
            info.contains(&format!("First sector: {} ", range.0)),
            "{info}"
        );
        assert!(
            info.contains(&format!("Last sector: {} ", range.1)),
            "{info}"
        );
        assert!(info.contains("Partition name: 'state'"), "{info}");
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
