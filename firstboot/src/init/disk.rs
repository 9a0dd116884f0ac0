//! Finding the boot disk's partitions through sysfs (`/sys/class/block`), without udev:
//! GPT partition names appear as `PARTNAME=` in each partition's `uevent`.

use std::fs;
use std::path::Path;

/// One partition as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDev {
    /// Kernel name, e.g. `vda2` (device node `/dev/<name>`).
    pub name: String,
    /// Whole-disk kernel name, e.g. `vda`.
    pub disk: String,
    pub number: u32,
    /// GPT partition name (label).
    pub label: String,
    /// `major:minor`.
    pub dev: String,
}

fn uevent_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Lists partitions under a `class/block` directory. Entries that disappear while being
/// read are skipped (devices come and go during boot).
pub fn list_partitions(class_block: &Path) -> Vec<PartDev> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(class_block) else {
        return out;
    };
    for ent in rd.flatten() {
        let p = ent.path();
        let Ok(num) = fs::read_to_string(p.join("partition")) else {
            continue;
        };
        let Ok(uevent) = fs::read_to_string(p.join("uevent")) else {
            continue;
        };
        let Ok(dev) = fs::read_to_string(p.join("dev")) else {
            continue;
        };
        // The partition's sysfs directory sits inside its disk's directory.
        let Ok(real) = fs::canonicalize(&p) else {
            continue;
        };
        let Some(disk) = real.parent().and_then(|d| d.file_name()) else {
            continue;
        };
        let Ok(number) = num.trim().parse() else {
            continue;
        };
        out.push(PartDev {
            name: ent.file_name().to_string_lossy().into_owned(),
            disk: disk.to_string_lossy().into_owned(),
            number,
            label: uevent_value(&uevent, "PARTNAME").unwrap_or_default(),
            dev: dev.trim().to_string(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The root and verity partitions of `slot` (labels `root-<slot>`, `root-<slot>-verity`),
/// which must be on one disk, and exactly one disk must carry them.
pub fn find_root(parts: &[PartDev], slot: char) -> Result<(PartDev, PartDev), String> {
    let root_label = format!("root-{slot}");
    let verity_label = format!("root-{slot}-verity");
    let mut found = Vec::new();
    for r in parts.iter().filter(|p| p.label == root_label) {
        if let Some(v) = parts
            .iter()
            .find(|p| p.label == verity_label && p.disk == r.disk)
        {
            found.push((r.clone(), v.clone()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no disk with GPT partitions labelled {root_label} and {verity_label}"
        )),
        _ => Err(format!(
            "several disks carry {root_label}: {} (remove the extra disk)",
            found
                .iter()
                .map(|f| f.0.disk.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Parses `major:minor`.
pub fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, disk: &str, part: &str, n: u32, label: &str, dev: &str) {
        let dir = root.join("devices").join(disk).join(part);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
        fs::write(
            dir.join("uevent"),
            format!("MAJOR=254\nDEVNAME={part}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
        )
        .unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        fs::create_dir_all(root.join("class")).unwrap();
        std::os::unix::fs::symlink(&dir, root.join("class").join(part)).unwrap();
    }

    #[test]
    fn finds_slot_on_one_disk() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "vda", "vda1", 1, "esp", "254:1");
        fake(t.path(), "vda", "vda2", 2, "root-a", "254:2");
        fake(t.path(), "vda", "vda3", 3, "root-a-verity", "254:3");
        fake(t.path(), "vdb", "vdb1", 1, "root-b-verity", "254:17");
        let parts = list_partitions(&t.path().join("class"));
        assert_eq!(parts.len(), 4);
        let (r, v) = find_root(&parts, 'a').unwrap();
        assert_eq!(
            (r.name.as_str(), r.disk.as_str(), r.number),
            ("vda2", "vda", 2)
        );
        assert_eq!((v.name.as_str(), v.dev.as_str()), ("vda3", "254:3"));
        assert!(find_root(&parts, 'b')
            .unwrap_err()
            .contains("root-b-verity"));
        fake(t.path(), "vdc", "vdc2", 2, "root-a", "254:34");
        fake(t.path(), "vdc", "vdc3", 3, "root-a-verity", "254:35");
        let parts = list_partitions(&t.path().join("class"));
        assert!(find_root(&parts, 'a').unwrap_err().contains("vda, vdc"));
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(parse_dev("254:3\n"), Some((254, 3)));
        assert_eq!(parse_dev("x"), None);
    }
}
