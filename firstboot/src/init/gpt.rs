//! The part of GPT `rke2-init` needs: read the table, move the backup header to the real end
//! of the disk, add the state partition in the free tail, write both copies.
//!
//! Local until `contract::gpt` lands; operates on any `FileExt` (a block device or a file).

use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;

/// Parsed GPT (primary copy) with raw 128-byte entries.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub sector: u64,
    pub disk_guid: [u8; 16],
    pub first_usable: u64,
    pub last_usable: u64,
    pub entry_size: u32,
    pub entries: Vec<[u8; 128]>,
}

/// One used entry in readable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub type_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// GUID text (upper case) from its on-disk mixed-endian bytes.
pub fn guid_to_string(g: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}-{}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        hex::encode_upper(&g[8..10]),
        hex::encode_upper(&g[10..16])
    )
}

/// On-disk bytes of a GUID given as text.
pub fn guid_from_str(s: &str) -> Result<[u8; 16], String> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let b = hex::decode(&h).map_err(|e| format!("GUID {s:?}: {e}"))?;
    if b.len() != 16 {
        return Err(format!("GUID {s:?} is not 16 bytes"));
    }
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    g[4..6].copy_from_slice(&[b[5], b[4]]);
    g[6..8].copy_from_slice(&[b[7], b[6]]);
    g[8..].copy_from_slice(&b[8..]);
    Ok(g)
}

fn io(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

impl Gpt {
    /// Reads and checks the primary header and entry array (CRCs verified).
    pub fn read(dev: &impl FileExt, sector: u64) -> Result<Gpt, String> {
        let mut h = vec![0u8; sector as usize];
        dev.read_exact_at(&mut h, sector)
            .map_err(|e| io("reading GPT header", e))?;
        if &h[0..8] != b"EFI PART" {
            return Err("no GPT header (signature \"EFI PART\" missing at LBA 1)".into());
        }
        let hsize = u32_at(&h, 12) as usize;
        if !(92..=sector as usize).contains(&hsize) {
            return Err(format!("GPT header size {hsize} invalid"));
        }
        let mut hc = h[..hsize].to_vec();
        hc[16..20].fill(0);
        if crc32fast::hash(&hc) != u32_at(&h, 16) {
            return Err("GPT header CRC mismatch".into());
        }
        let entries_lba = u64_at(&h, 72);
        let count = u32_at(&h, 80);
        let entry_size = u32_at(&h, 84);
        if entry_size != 128 || count == 0 || count > 1024 {
            return Err(format!("GPT entry layout {count}x{entry_size} unsupported"));
        }
        let mut raw = vec![0u8; (count * entry_size) as usize];
        dev.read_exact_at(&mut raw, entries_lba * sector)
            .map_err(|e| io("reading GPT entries", e))?;
        if crc32fast::hash(&raw) != u32_at(&h, 88) {
            return Err("GPT entry array CRC mismatch".into());
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&h[56..72]);
        let entries = raw
            .chunks_exact(128)
            .map(|c| {
                let mut e = [0u8; 128];
                e.copy_from_slice(c);
                e
            })
            .collect();
        Ok(Gpt {
            sector,
            disk_guid,
            first_usable: u64_at(&h, 40),
            last_usable: u64_at(&h, 48),
            entry_size,
            entries,
        })
    }

    /// Used entries, by number.
    pub fn parts(&self) -> Vec<Part> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e[0..16].iter().all(|&b| b == 0) {
                continue;
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            out.push(Part {
                number: i as u32 + 1,
                type_guid: guid_to_string(&e[0..16]),
                first_lba: u64_at(e, 32),
                last_lba: u64_at(e, 40),
                name: String::from_utf16_lossy(&units),
            });
        }
        out
    }

    fn entry_sectors(&self) -> u64 {
        (self.entries.len() as u64 * u64::from(self.entry_size)).div_ceil(self.sector)
    }

    /// The aligned free range after the last partition up to the end of a disk of
    /// `disk_bytes` (after moving the backup GPT there), or None when under `min_bytes`.
    pub fn free_tail(
        &self,
        disk_bytes: u64,
        align_bytes: u64,
        min_bytes: u64,
    ) -> Option<(u64, u64)> {
        let disk_sectors = disk_bytes / self.sector;
        let last_usable = disk_sectors.checked_sub(2 + self.entry_sectors())?;
        let align = (align_bytes / self.sector).max(1);
        let end = self.parts().iter().map(|p| p.last_lba).max().unwrap_or(0);
        let first = (end.max(self.first_usable - 1) + 1).div_ceil(align) * align;
        let last = ((last_usable + 1) / align) * align;
        let last = last.checked_sub(1)?;
        if last < first || (last - first + 1) * self.sector < min_bytes {
            return None;
        }
        Some((first, last))
    }

    /// Adds entry `number` and rewrites primary and backup GPT for a disk of `disk_bytes`
    /// (the backup moves to the real end, `last_usable` grows). The new partition's GUID
    /// derives from the disk GUID, so the result is deterministic.
    pub fn add_and_write(
        &mut self,
        dev: &impl FileExt,
        disk_bytes: u64,
        number: u32,
        type_guid: &str,
        name: &str,
        range: (u64, u64),
    ) -> Result<[u8; 16], String> {
        let idx = number
            .checked_sub(1)
            .map(|n| n as usize)
            .filter(|&n| n < self.entries.len());
        let Some(idx) = idx else {
            return Err(format!("GPT has no slot for partition {number}"));
        };
        if self.entries[idx][0..16].iter().any(|&b| b != 0) {
            return Err(format!("GPT partition {number} is already in use"));
        }
        let disk_sectors = disk_bytes / self.sector;
        let es = self.entry_sectors();
        self.last_usable = disk_sectors - 2 - es;
        let mut e = [0u8; 128];
        e[0..16].copy_from_slice(&guid_from_str(type_guid)?);
        let mut h = Sha256::new();
        h.update(self.disk_guid);
        h.update(b"rke2-image state partition");
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&h.finalize()[..16]);
        guid[7] = (guid[7] & 0x0f) | 0x40; // RFC 4122 version 4 layout (mixed-endian field 3)
        guid[8] = (guid[8] & 0x3f) | 0x80;
        e[16..32].copy_from_slice(&guid);
        e[32..40].copy_from_slice(&range.0.to_le_bytes());
        e[40..48].copy_from_slice(&range.1.to_le_bytes());
        for (i, u) in name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        self.entries[idx] = e;
        let raw: Vec<u8> = self.entries.concat();
        let entries_crc = crc32fast::hash(&raw);
        let backup_lba = disk_sectors - 1;
        let backup_entries = backup_lba - es;
        let header = |my: u64, alt: u64, ents: u64| {
            let mut b = vec![0u8; self.sector as usize];
            b[0..8].copy_from_slice(b"EFI PART");
            b[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            b[12..16].copy_from_slice(&92u32.to_le_bytes());
            b[24..32].copy_from_slice(&my.to_le_bytes());
            b[32..40].copy_from_slice(&alt.to_le_bytes());
            b[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
            b[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
            b[56..72].copy_from_slice(&self.disk_guid);
            b[72..80].copy_from_slice(&ents.to_le_bytes());
            b[80..84].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
            b[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
            b[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            let c = crc32fast::hash(&b[..92]);
            b[16..20].copy_from_slice(&c.to_le_bytes());
            b
        };
        let s = self.sector;
        // Backup first: if power fails mid-way the primary still describes a valid disk.
        dev.write_all_at(&raw, backup_entries * s)
            .map_err(|e| io("writing backup GPT entries", e))?;
        dev.write_all_at(&header(backup_lba, 1, backup_entries), backup_lba * s)
            .map_err(|e| io("writing backup GPT header", e))?;
        dev.write_all_at(&raw, 2 * s)
            .map_err(|e| io("writing GPT entries", e))?;
        dev.write_all_at(&header(1, backup_lba, 2), s)
            .map_err(|e| io("writing GPT header", e))?;
        Ok(guid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sgdisk(args: &[&str], path: &std::path::Path) -> String {
        let out = Command::new("sgdisk")
            .args(args)
            .arg(path)
            .output()
            .expect("sgdisk");
        assert!(
            out.status.success(),
            "sgdisk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Oracle: sgdisk writes a table, we grow the disk and add the state partition,
    /// sgdisk -v finds no problem and reports the new partition where we put it.
    #[test]
    fn grows_disk_and_adds_state_partition() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        sgdisk(
            &[
                "-n",
                "1:2048:+8M",
                "-t",
                "1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                "-c",
                "1:esp",
                "-n",
                "2:0:+16M",
                "-t",
                "2:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                "-c",
                "2:root-a",
            ],
            &img,
        );
        f.set_len(200 << 20).unwrap();
        let mut g = Gpt::read(&f, 512).unwrap();
        let parts = g.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].name, "root-a");
        assert_eq!(parts[1].type_guid, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
        let range = g.free_tail(200 << 20, 1 << 20, 1 << 20).unwrap();
        assert_eq!(range.0, parts[1].last_lba + 1);
        assert_eq!(range.0 % 2048, 0);
        g.add_and_write(
            &f,
            200 << 20,
            6,
            "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
            "state",
            range,
        )
        .unwrap();
        let v = sgdisk(&["-v"], &img);
        assert!(v.contains("No problems found"), "{v}");
        let info = sgdisk(&["-i", "6"], &img);
        assert!(
            info.contains("4D21B016-B534-45C2-A9FB-5C16E091FD2D"),
            "{info}"
        );
        assert!(
            info.contains(&format!("First sector: {} ", range.0)),
            "{info}"
        );
        assert!(
            info.contains(&format!("Last sector: {} ", range.1)),
            "{info}"
        );
        assert!(info.contains("Partition name: 'state'"), "{info}");
        // Re-read: CRCs valid, slot now taken.
        let mut g2 = Gpt::read(&f, 512).unwrap();
        assert_eq!(g2.parts().len(), 3);
        assert!(g2.free_tail(200 << 20, 1 << 20, 1 << 20).is_none());
        assert!(g2
            .add_and_write(
                &f,
                200 << 20,
                6,
                "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
                "x",
                range
            )
            .unwrap_err()
            .contains("already in use"));
    }

    #[test]
    fn guid_text_roundtrip() {
        let s = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
        assert_eq!(guid_to_string(&guid_from_str(s).unwrap()), s);
    }
}
