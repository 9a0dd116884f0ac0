//! GUID Partition Table (UEFI 2.x, chapter 5): protective MBR, primary header and entry array
//! at the start of the disk, backup array and header at the end.
//!
//! The builder writes the table of every image; `rke2-init` reads it on first boot, moves the
//! backup to the end of the (usually larger) real disk with [`Table::resize`] and adds the state
//! partition in [`Table::free_tail`]. Written here rather than taken from a crate so that every
//! byte is deterministic (no random GUIDs, no timestamps) and both sides agree exactly.

use std::fmt;
use std::os::unix::fs::FileExt;

/// Number of entry slots in the array (the UEFI minimum, what every tool writes).
pub const ENTRIES: usize = 128;
/// Size of one entry in bytes.
pub const ENTRY_SIZE: usize = 128;
/// Size of the header in bytes (the rest of its sector is zero).
pub const HEADER_SIZE: usize = 92;
/// Maximum partition name length in UTF-16 code units.
pub const NAME_UNITS: usize = 36;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const ARRAY_BYTES: u64 = (ENTRIES * ENTRY_SIZE) as u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("{0:?} is not a GUID (expected the form C12A7328-F81F-11D2-BA4B-00A0C93EC93B)")]
    BadGuid(String),
    #[error("sector size {0} is not supported (use 512 or 4096)")]
    BadSectorSize(u64),
    #[error("disk size {size} is not a multiple of the sector size {sector_size}")]
    UnalignedDisk { size: u64, sector_size: u64 },
    #[error("disk of {size} bytes is too small for a GPT (needs at least {min} bytes)")]
    DiskTooSmall { size: u64, min: u64 },
    #[error("partition number {0} is out of range (1..=128)")]
    BadNumber(u32),
    #[error("partition {0} already exists in the table")]
    SlotUsed(u32),
    #[error("partition {number}: LBA {first}..={last} is outside the usable area {first_usable}..={last_usable}")]
    OutOfRange {
        number: u32,
        first: u64,
        last: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partition {number} (LBA {first}..={last}) overlaps partition {other}")]
    Overlap {
        number: u32,
        first: u64,
        last: u64,
        other: u32,
    },
    #[error("partition {number}: type GUID must not be all zeros (that marks an unused slot)")]
    ZeroType { number: u32 },
    #[error("partition {number}: name {name:?} is longer than 36 UTF-16 units")]
    NameTooLong { number: u32, name: String },
    #[error("cannot shrink the disk to {new_size} bytes: partition {number} ends at LBA {last}, the new last usable LBA would be {last_usable}")]
    ShrinkCutsPartition {
        new_size: u64,
        number: u32,
        last: u64,
        last_usable: u64,
    },
    #[error("no valid GPT on the device: primary: {primary}; backup: {backup}")]
    NoValidTable { primary: String, backup: String },
    #[error("{what} at byte offset {offset}: {message}")]
    Io {
        what: &'static str,
        offset: u64,
        message: String,
    },
}

/// A GUID as stored on disk: the first three fields little-endian, the rest as bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses the canonical text form (either case).
    pub fn parse(s: &str) -> Result<Guid, GptError> {
        let bad = || GptError::BadGuid(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(bad());
        }
        let mut text = [0u8; 16];
        let hex: String = groups.concat();
        for (i, b) in text.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        let mut g = text;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Ok(Guid(g))
    }

    /// A GUID derived from hash output: the same input always gives the same GUID, marked as
    /// an RFC 4122 version 4 (random) variant 1 GUID so tools accept it as well-formed.
    pub fn from_hash(bytes: [u8; 16]) -> Guid {
        let mut g = bytes;
        // The version nibble is the top of the third field, which is little-endian on disk.
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Guid(g)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9]
        )?;
        for b in &g[10..16] {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    /// Partition label (UTF-16LE on disk, at most 36 units).
    pub name: String,
}

impl Entry {
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

/// Which copy of the table a problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCopy {
    Primary,
    Backup,
}

/// A GPT in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub disk_guid: Guid,
    pub sector_size: u64,
    /// Size of the disk the table describes, in sectors (the backup header is the last one).
    pub disk_sectors: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    /// 128 slots, index = partition number - 1.
    pub entries: Vec<Option<Entry>>,
    /// Set by [`Table::read`]: copies that were damaged (and why). The table was taken from
    /// the other copy; [`Table::write`] rewrites both. Empty for a table made by [`Table::new`].
    pub damaged: Vec<(TableCopy, String)>,
}

impl Table {
    /// An empty table for a disk of `disk_size` bytes.
    pub fn new(disk_guid: Guid, disk_size: u64, sector_size: u64) -> Result<Table, GptError> {
        let disk_sectors = check_geometry(disk_size, sector_size)?;
        let array = array_sectors(sector_size);
        Ok(Table {
            disk_guid,
            sector_size,
            disk_sectors,
            first_usable: 2 + array,
            last_usable: disk_sectors - 2 - array,
            entries: vec![None; ENTRIES],
            damaged: Vec::new(),
        })
    }

    /// Partition `number` (1-based), if present.
    pub fn get(&self, number: u32) -> Option<&Entry> {
        let i = usize::try_from(number).ok()?.checked_sub(1)?;
        self.entries.get(i)?.as_ref()
    }

    /// The first partition whose name is `name`, with its number.
    pub fn find(&self, name: &str) -> Option<(u32, &Entry)> {
        self.partitions().find(|(_, e)| e.name == name)
    }

    /// Present partitions with their numbers, in number order.
    pub fn partitions(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32 + 1, e)))
    }

    /// Adds partition `number`. Checks the slot is free, the range lies in the usable area and
    /// overlaps nothing; alignment is the caller's choice.
    pub fn add(&mut self, number: u32, entry: Entry) -> Result<(), GptError> {
        if number == 0 || number as usize > ENTRIES {
            return Err(GptError::BadNumber(number));
        }
        if self.get(number).is_some() {
            return Err(GptError::SlotUsed(number));
        }
        // `entries` is public: tolerate a caller having shortened it.
        if self.entries.len() < ENTRIES {
            self.entries.resize(ENTRIES, None);
        }
        if entry.type_guid.is_zero() {
            return Err(GptError::ZeroType { number });
        }
        if entry.name.encode_utf16().count() > NAME_UNITS {
            return Err(GptError::NameTooLong {
                number,
                name: entry.name,
            });
        }
        if entry.first_lba > entry.last_lba
            || entry.first_lba < self.first_usable
            || entry.last_lba > self.last_usable
        {
            return Err(GptError::OutOfRange {
                number,
                first: entry.first_lba,
                last: entry.last_lba,
                first_usable: self.first_usable,
                last_usable: self.last_usable,
            });
        }
        if let Some((other, _)) = self
            .partitions()
            .find(|(_, e)| entry.first_lba <= e.last_lba && e.first_lba <= entry.last_lba)
        {
            return Err(GptError::Overlap {
                number,
                first: entry.first_lba,
                last: entry.last_lba,
                other,
            });
        }
        self.entries[number as usize - 1] = Some(entry);
        Ok(())
    }

    /// Removes partition `number`, returning it.
    pub fn remove(&mut self, number: u32) -> Option<Entry> {
        let i = usize::try_from(number).ok()?.checked_sub(1)?;
        self.entries.get_mut(i)?.take()
    }

    /// Reads the table from a device of `disk_size` bytes. Validates signature, revision,
    /// header CRC, location and entry-array CRC of the primary copy; if it is bad, uses the
    /// backup in the last sector. Problems with either copy are listed in `damaged`. If the disk
    /// is larger than the table says (an image written to a bigger disk), the table keeps its
    /// own size: call [`Table::resize`].
    pub fn read<D: FileExt>(dev: &D, disk_size: u64, sector_size: u64) -> Result<Table, GptError> {
        let disk_sectors = check_geometry(disk_size, sector_size)?;
        let primary = read_copy(dev, 1, disk_sectors, sector_size);
        match primary {
            Ok(mut t) => {
                // The backup sits where the primary says (the old end if the disk grew).
                let alt = t.disk_sectors - 1;
                match read_copy(dev, alt, disk_sectors, sector_size) {
                    Ok(b) if b.same_layout(&t) => {}
                    Ok(_) => t.damaged.push((
                        TableCopy::Backup,
                        format!("backup at LBA {alt} differs from the primary table"),
                    )),
                    Err(e) => t.damaged.push((TableCopy::Backup, e)),
                }
                Ok(t)
            }
            Err(perr) => match read_copy(dev, disk_sectors - 1, disk_sectors, sector_size) {
                Ok(mut t) => {
                    t.damaged.insert(0, (TableCopy::Primary, perr));
                    Ok(t)
                }
                Err(berr) => Err(GptError::NoValidTable {
                    primary: perr,
                    backup: berr,
                }),
            },
        }
    }

    fn same_layout(&self, other: &Table) -> bool {
        self.disk_guid == other.disk_guid
            && self.first_usable == other.first_usable
            && self.last_usable == other.last_usable
            && self.entries == other.entries
    }

    /// Writes the protective MBR, both entry arrays and both headers. The backup copy is written
    /// first, so an interrupted write leaves one intact copy for [`Table::read`].
    pub fn write<D: FileExt>(&self, dev: &D) -> Result<(), GptError> {
        let ss = self.sector_size;
        let array_len = array_sectors(ss);
        let array = self.encode_array();
        let array_crc = crc32(&array);
        let backup_lba = self.disk_sectors - 1;
        let backup_array_lba = backup_lba - array_len;
        let backup = self.encode_header(backup_lba, 1, backup_array_lba, array_crc);
        let primary = self.encode_header(1, backup_lba, 2, array_crc);

        put(dev, &array, backup_array_lba * ss, "backup GPT entry array")?;
        put(dev, &backup, backup_lba * ss, "backup GPT header")?;
        put(dev, &array, 2 * ss, "primary GPT entry array")?;
        put(dev, &primary, ss, "primary GPT header")?;
        put(dev, &self.encode_mbr(), 0, "protective MBR")?;
        Ok(())
    }

    /// Moves the end of the table to a disk of `new_disk_size` bytes (the backup goes to the
    /// new last sector, `last_usable` follows). Shrinking is allowed only if no partition is cut.
    pub fn resize(&mut self, new_disk_size: u64) -> Result<(), GptError> {
        let disk_sectors = check_geometry(new_disk_size, self.sector_size)?;
        let last_usable = disk_sectors - 2 - array_sectors(self.sector_size);
        if let Some((number, e)) = self.partitions().find(|(_, e)| e.last_lba > last_usable) {
            return Err(GptError::ShrinkCutsPartition {
                new_size: new_disk_size,
                number,
                last: e.last_lba,
                last_usable,
            });
        }
        self.disk_sectors = disk_sectors;
        self.last_usable = last_usable;
        Ok(())
    }

    /// First and last LBA of the free space after the last partition (up to `last_usable`).
    /// If there is none, the first is `last_usable + 1`.
    pub fn free_tail(&self) -> (u64, u64) {
        let first = self
            .partitions()
            .map(|(_, e)| e.last_lba + 1)
            .max()
            .unwrap_or(self.first_usable)
            .max(self.first_usable);
        (first, self.last_usable)
    }

    fn encode_array(&self) -> Vec<u8> {
        let mut out = vec![0u8; ARRAY_BYTES as usize];
        for (slot, e) in out.chunks_exact_mut(ENTRY_SIZE).zip(&self.entries) {
            let Some(e) = e else { continue };
            slot[0..16].copy_from_slice(&e.type_guid.0);
            slot[16..32].copy_from_slice(&e.guid.0);
            slot[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
            slot[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
            slot[48..56].copy_from_slice(&e.attributes.to_le_bytes());
            for (i, u) in e.name.encode_utf16().take(NAME_UNITS).enumerate() {
                slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        out
    }

    fn encode_header(&self, my_lba: u64, alt_lba: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector_size as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn encode_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.sector_size as usize];
        let p = &mut m[446..462];
        // CHS fields (UEFI 2.x 5.2.3): start is LBA 1 = C0/H0/S2; end is the last LBA in a
        // 255-head, 63-sector geometry, or FF FF FF when that is beyond CHS range.
        p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        p[4] = 0xEE;
        p[5..8].copy_from_slice(&chs(self.disk_sectors - 1));
        p[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = (self.disk_sectors - 1).min(0xFFFF_FFFF) as u32;
        p[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }
}

/// Cylinder/head/sector bytes of `lba` in the conventional 255-head, 63-sector geometry.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    if lba >= 1024 * HEADS * SECTORS {
        return [0xFF, 0xFF, 0xFF];
    }
    let cyl = lba / (HEADS * SECTORS);
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | ((cyl >> 2) as u8 & 0xC0),
        cyl as u8,
    ]
}

fn check_geometry(disk_size: u64, sector_size: u64) -> Result<u64, GptError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(GptError::BadSectorSize(sector_size));
    }
    if disk_size / sector_size * sector_size != disk_size {
        return Err(GptError::UnalignedDisk {
            size: disk_size,
            sector_size,
        });
    }
    // MBR, two headers, two arrays and at least one usable sector.
    let min = (3 + 2 * array_sectors(sector_size) + 1) * sector_size;
    if disk_size < min {
        return Err(GptError::DiskTooSmall {
            size: disk_size,
            min,
        });
    }
    Ok(disk_size / sector_size)
}

fn array_sectors(sector_size: u64) -> u64 {
    ARRAY_BYTES.div_ceil(sector_size)
}

fn put<D: FileExt>(dev: &D, buf: &[u8], offset: u64, what: &'static str) -> Result<(), GptError> {
    dev.write_all_at(buf, offset).map_err(|e| GptError::Io {
        what,
        offset,
        message: e.to_string(),
    })
}

/// Reads and validates the header at `lba` and its entry array. Errors are plain text because
/// they end up in `damaged` or in [`GptError::NoValidTable`].
fn read_copy<D: FileExt>(dev: &D, lba: u64, disk_sectors: u64, ss: u64) -> Result<Table, String> {
    let which = if lba == 1 { "primary" } else { "backup" };
    let mut h = vec![0u8; ss as usize];
    dev.read_exact_at(&mut h, lba * ss)
        .map_err(|e| format!("{which} header at LBA {lba}: cannot read: {e}"))?;
    if &h[0..8] != SIGNATURE {
        return Err(format!(
            "{which} header at LBA {lba}: no \"EFI PART\" signature"
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let revision = u32_at(8);
    if revision != REVISION {
        return Err(format!(
            "{which} header at LBA {lba}: revision {revision:#x} is not 1.0"
        ));
    }
    let hsize = u32_at(12) as usize;
    if hsize < HEADER_SIZE || hsize > ss as usize {
        return Err(format!(
            "{which} header at LBA {lba}: header size {hsize} out of range"
        ));
    }
    let stored_crc = u32_at(16);
    let mut copy = h[..hsize].to_vec();
    copy[16..20].fill(0);
    let crc = crc32(&copy);
    if crc != stored_crc {
        return Err(format!(
            "{which} header at LBA {lba}: header CRC {stored_crc:#010x} does not match the computed {crc:#010x}"
        ));
    }
    let my_lba = u64_at(24);
    let alt_lba = u64_at(32);
    let first_usable = u64_at(40);
    let last_usable = u64_at(48);
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&h[56..72]);
    let array_lba = u64_at(72);
    let n = u32_at(80) as u64;
    let esize = u32_at(84) as u64;
    let array_crc = u32_at(88);
    if my_lba != lba {
        return Err(format!(
            "{which} header at LBA {lba} says it is at LBA {my_lba}"
        ));
    }
    // The backup header is the last sector of the disk the table was made for.
    let table_end = if lba == 1 { alt_lba } else { lba };
    if table_end >= disk_sectors {
        return Err(format!(
            "{which} header at LBA {lba}: the table ends at LBA {table_end}, beyond the disk's last LBA {} (image larger than the disk?)",
            disk_sectors - 1
        ));
    }
    if esize < ENTRY_SIZE as u64 || esize & 7 != 0 || n == 0 || n > 1024 {
        return Err(format!(
            "{which} header at LBA {lba}: {n} entries of {esize} bytes is not a supported array"
        ));
    }
    let array_len = (n * esize).div_ceil(ss);
    if first_usable < 2 + array_len
        || last_usable < first_usable
        || last_usable + 1 + array_len > table_end
        || array_lba + array_len > disk_sectors
        || (array_lba <= last_usable && array_lba + array_len > first_usable)
    {
        return Err(format!(
            "{which} header at LBA {lba}: inconsistent layout (usable {first_usable}..={last_usable}, array at {array_lba}, table end {table_end})"
        ));
    }
    let mut array = vec![0u8; (n * esize) as usize];
    dev.read_exact_at(&mut array, array_lba * ss)
        .map_err(|e| format!("{which} entry array at LBA {array_lba}: cannot read: {e}"))?;
    let crc = crc32(&array);
    if crc != array_crc {
        return Err(format!(
            "{which} entry array at LBA {array_lba}: CRC {crc:#010x} does not match the header's {array_crc:#010x}"
        ));
    }
    let mut entries = vec![None; ENTRIES];
    for (i, slot) in array.chunks_exact(esize as usize).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&slot[0..16]);
        if type_guid == [0; 16] {
            continue;
        }
        if i >= ENTRIES {
            return Err(format!(
                "{which} entry array: partition {} is beyond the 128 entries this tool handles",
                i + 1
            ));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&slot[16..32]);
        let le = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&slot[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let units: Vec<u16> = slot[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let e = Entry {
            type_guid: Guid(type_guid),
            guid: Guid(guid),
            first_lba: le(32),
            last_lba: le(40),
            attributes: le(48),
            name: String::from_utf16_lossy(&units),
        };
        if e.first_lba > e.last_lba || e.first_lba < first_usable || e.last_lba > last_usable {
            return Err(format!(
                "{which} entry array: partition {} (LBA {}..={}) lies outside the usable area {first_usable}..={last_usable}",
                i + 1,
                e.first_lba,
                e.last_lba
            ));
        }
        entries[i] = Some(e);
    }
    Ok(Table {
        disk_guid: Guid(disk_guid),
        sector_size: ss,
        disk_sectors: table_end + 1,
        first_usable,
        last_usable,
        entries,
        damaged: Vec::new(),
    })
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses for headers and entry arrays.
pub use crate::crc::crc32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip_and_layout() {
        let g = Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        assert_eq!(
            g.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        for bad in [
            "",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_hash_sets_version_and_variant() {
        let s = Guid::from_hash([0xFF; 16]).to_string();
        assert_eq!(s.as_bytes()[14], b'4');
        assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'A' | b'B'));
        assert_eq!(Guid::from_hash([7; 16]), Guid::from_hash([7; 16]));
    }
}
