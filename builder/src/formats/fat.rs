//! FAT32 writer and reader for the EFI system partition.
//!
//! Written here because the `fatfs` crate produces volumes `fsck.fat` reports as damaged. The
//! writer lays everything out in one pass, deterministically: sorted names, contiguous
//! allocation (directories first, then files, both in path order), 8.3 short names derived
//! from the long names in sorted order, every timestamp taken from one fixed epoch. It follows
//! mkfs.fat's choices where they matter to firmware and tools: 512-byte sectors, 32 reserved
//! sectors, two FATs, the cluster size mkfs.fat would pick for the volume size, FSInfo with the
//! correct free count, backup boot sector at sector 6, root directory at cluster 2.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::tree::{Blob, Tree};

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const FATS: u64 = 2;
/// UEFI and Microsoft decide "FAT32" by cluster count: fewer than this is FAT16.
const MIN_CLUSTERS: u64 = 65525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF4;
const EOC: u32 = 0x0FFF_FFFF;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;
const LFN_CHARS: usize = 13;
const MAX_FILE: u64 = 0xFFFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Volume label, at most 11 characters (upper case letters, digits, space and `!#$%&'()-@^_{}~`).
    pub label: String,
    pub volume_id: u32,
    /// Seconds since the epoch, used for every timestamp.
    pub mtime: u64,
}

/// What [`write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub cluster_size: u64,
    /// Data clusters in the volume.
    pub clusters: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    pub files: usize,
    /// Directories, not counting the root.
    pub dirs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("ESP contents do not fit: they need a FAT32 volume of at least {needed} bytes, the partition has {available}; make the ESP larger")]
    DoesNotFit { needed: u64, available: u64 },
    #[error("{size} bytes is too small for a FAT32 volume (at least {min} bytes are needed for {MIN_CLUSTERS} clusters)")]
    TooSmall { size: u64, min: u64 },
    #[error("volume offset {offset} and size {size} must be multiples of {SECTOR} bytes")]
    Unaligned { offset: u64, size: u64 },
    #[error("ESP path {path:?}: {reason}")]
    BadName { path: String, reason: String },
    #[error("volume label {0:?} is invalid: at most 11 characters, upper case letters, digits, space and !#$%&'()-@^_{{}}~")]
    BadLabel(String),
    #[error("ESP file {path:?} is {len} bytes; FAT32 files must be smaller than 4 GiB")]
    FileTooLarge { path: String, len: u64 },
    #[error("ESP file {path:?}: its source yielded {got} bytes, {expected} were expected (did it change during the build?)")]
    Length {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("not a valid FAT32 volume: {0}")]
    Corrupt(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FatError {
    let what = what.into();
    move |source| FatError::Io { what, source }
}

// ---------------------------------------------------------------------------------------------
// Geometry

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    total: u64,
    spc: u64,
    reserved: u64,
    fat: u64,
    clusters: u64,
}

impl Geometry {
    fn cluster_bytes(&self) -> u64 {
        self.spc * SECTOR
    }

    fn data_start(&self) -> u64 {
        (self.reserved + FATS * self.fat) * SECTOR
    }

    /// Byte offset of cluster `c` within the volume.
    fn cluster_offset(&self, c: u64) -> u64 {
        self.data_start() + (c - 2) * self.cluster_bytes()
    }
}

/// Sectors per cluster mkfs.fat picks for a FAT32 volume of `total` sectors (after Microsoft's
/// table: up to 260 MiB 512 bytes, up to 8 GiB 4 KiB, up to 16 GiB 8 KiB, up to 32 GiB 16 KiB).
fn cluster_sectors_for(total: u64) -> u64 {
    let mb = (total * SECTOR).div_ceil(1024 * 1024);
    match mb {
        0..=260 => 1,
        261..=8192 => 8,
        8193..=16384 => 16,
        16385..=32768 => 32,
        _ => 64,
    }
}

/// Lays out `total` sectors with clusters of `spc` sectors: the smallest FAT that covers the
/// clusters, rounded up to whole clusters so the data area is cluster-aligned.
fn layout(total: u64, spc: u64) -> Option<Geometry> {
    let reserved = RESERVED.div_ceil(spc) * spc;
    let avail = total.checked_sub(reserved)?;
    // need(fat) shrinks as the FAT grows, so "the FAT covers its clusters" is monotone in the
    // FAT size: binary search for the smallest FAT that does.
    let need = |fat: u64| ((avail.saturating_sub(FATS * fat) / spc + 2) * 4).div_ceil(SECTOR);
    let (mut lo, mut hi) = (1u64, need(0).max(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if need(mid) <= mid {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut fat = lo;
    fat = fat.div_ceil(spc) * spc;
    let clusters = avail.checked_sub(FATS * fat)? / spc;
    if clusters == 0 {
        return None;
    }
    Some(Geometry {
        total,
        spc,
        reserved,
        fat,
        clusters: clusters.min(MAX_CLUSTERS),
    })
}

/// Smallest volume (in sectors) with clusters of `spc` sectors and at least `need` clusters.
fn smallest_total(need: u64, spc: u64) -> u64 {
    let need = need.max(MIN_CLUSTERS);
    let mut total = RESERVED.div_ceil(spc) * spc + need * spc;
    loop {
        match layout(total, spc) {
            Some(g) if g.clusters >= need => return total,
            Some(g) => total += (need - g.clusters) * spc,
            None => total += spc,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names

/// Characters allowed in 8.3 names besides upper-case letters and digits.
const SHORT_SPECIAL: &[u8] = b"!#$%&'()-@^_`{}~";

fn long_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty path component");
    }
    if name == "." || name == ".." {
        return Some("'.' and '..' are not allowed as names");
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Some("names must not end in '.' or space (FAT drops them)");
    }
    if name
        .chars()
        .any(|c| (c as u32) < 0x20 || "\"*/:<>?\\|\u{7f}".contains(c))
    {
        return Some("contains a character FAT does not allow (control, \" * / : < > ? \\ |)");
    }
    if name.encode_utf16().count() > 255 {
        return Some("longer than 255 UTF-16 units");
    }
    None
}

/// The 8.3 basis of a long name (Microsoft's algorithm without the numeric tail): base and
/// extension in upper case, and whether anything but case was lost.
fn short_basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let mut lossy = false;
    let map = |s: &str, lossy: &mut bool| -> Vec<u8> {
        let mut out = Vec::new();
        for c in s.chars() {
            if c == ' ' || c == '.' {
                *lossy = true;
                continue;
            }
            let u = c.to_ascii_uppercase();
            if u.is_ascii_uppercase()
                || u.is_ascii_digit()
                || (u.is_ascii() && SHORT_SPECIAL.contains(&(u as u8)))
            {
                out.push(u as u8);
            } else {
                *lossy = true;
                out.push(b'_');
            }
        }
        out
    };
    let trimmed = name.trim_start_matches('.');
    if trimmed.len() != name.len() {
        lossy = true;
    }
    let (b, e) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut base = map(b, &mut lossy);
    let mut ext = map(e, &mut lossy);
    if base.len() > 8 {
        base.truncate(8);
        lossy = true;
    }
    if ext.len() > 3 {
        ext.truncate(3);
        lossy = true;
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

fn pack_short(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base);
    s[8..8 + ext.len()].copy_from_slice(ext);
    s
}

/// The short name as text (`NAME.EXT`), how it reads without a long name.
fn short_display(s: &[u8; 11]) -> String {
    let base = String::from_utf8_lossy(&s[..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&s[8..]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

fn lfn_checksum(s: &[u8; 11]) -> u8 {
    s.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

// ---------------------------------------------------------------------------------------------
// Plan: directory tree, names and sizes, independent of the volume size.

#[derive(Debug, Clone, Copy)]
enum Child {
    Dir(usize),
    File(usize),
}

#[derive(Debug)]
struct Slot {
    short: [u8; 11],
    /// UTF-16 long name when the short name does not say the same.
    long: Option<Vec<u16>>,
    child: Child,
}

#[derive(Debug)]
struct Dir {
    path: String,
    parent: usize,
    children: BTreeMap<String, Child>,
    slots: Vec<Slot>,
}

impl Dir {
    /// 32-byte entries: `.`/`..` (or the volume label in the root) plus names.
    fn entries(&self, is_root: bool, has_label: bool) -> u64 {
        let own = if is_root { u64::from(has_label) } else { 2 };
        own + self
            .slots
            .iter()
            .map(|s| {
                1 + s
                    .long
                    .as_ref()
                    .map_or(0, |l| l.len().div_ceil(LFN_CHARS) as u64)
            })
            .sum::<u64>()
    }
}

#[derive(Debug)]
struct Plan<'a> {
    dirs: Vec<Dir>,
    /// (path, blob), sorted by path.
    files: Vec<(&'a str, &'a Blob)>,
    has_label: bool,
}

impl<'a> Plan<'a> {
    fn new(files: &'a [(String, Blob)], has_label: bool) -> Result<Plan<'a>, FatError> {
        let mut sorted: Vec<(&str, &Blob)> = files.iter().map(|(p, b)| (p.as_str(), b)).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut dirs = vec![Dir {
            path: String::new(),
            parent: 0,
            children: BTreeMap::new(),
            slots: Vec::new(),
        }];
        let mut out_files = Vec::with_capacity(sorted.len());
        for (path, blob) in sorted {
            let bad = |reason: &str| FatError::BadName {
                path: path.to_string(),
                reason: reason.to_string(),
            };
            if blob.len() > MAX_FILE {
                return Err(FatError::FileTooLarge {
                    path: path.to_string(),
                    len: blob.len(),
                });
            }
            let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let Some((last, parents)) = comps.split_last() else {
                return Err(bad("empty path"));
            };
            let mut d = 0usize;
            let mut so_far = String::new();
            for c in parents.iter().chain(std::iter::once(last)) {
                if let Some(r) = long_name_error(c) {
                    return Err(bad(r));
                }
            }
            for c in parents {
                if !so_far.is_empty() {
                    so_far.push('/');
                }
                so_far.push_str(c);
                d = match dirs[d].children.get(*c) {
                    Some(Child::Dir(i)) => *i,
                    Some(Child::File(_)) => {
                        return Err(bad(&format!("{so_far:?} is a file and also a directory")))
                    }
                    None => {
                        let i = dirs.len();
                        dirs[d].children.insert(c.to_string(), Child::Dir(i));
                        dirs.push(Dir {
                            path: so_far.clone(),
                            parent: d,
                            children: BTreeMap::new(),
                            slots: Vec::new(),
                        });
                        i
                    }
                };
            }
            if dirs[d].children.contains_key(*last) {
                return Err(bad("listed twice, or a file and also a directory"));
            }
            dirs[d]
                .children
                .insert(last.to_string(), Child::File(out_files.len()));
            out_files.push((path, blob));
        }
        for (i, dir) in dirs.iter_mut().enumerate() {
            dir.slots = assign_short_names(dir)?;
            // Directory offsets are 16-bit entry indices in FAT drivers.
            if dir.entries(i == 0, has_label) > 65536 {
                return Err(FatError::BadName {
                    path: dir.path.clone(),
                    reason: "too many entries for one FAT directory (65536 slots); split it".into(),
                });
            }
        }
        Ok(Plan {
            dirs,
            files: out_files,
            has_label,
        })
    }

    fn dir_clusters(&self, i: usize, cluster_bytes: u64) -> u64 {
        (self.dirs[i].entries(i == 0, self.has_label) * 32)
            .div_ceil(cluster_bytes)
            .max(1)
    }

    fn clusters_needed(&self, cluster_bytes: u64) -> u64 {
        let dirs: u64 = (0..self.dirs.len())
            .map(|i| self.dir_clusters(i, cluster_bytes))
            .sum();
        let files: u64 = self
            .files
            .iter()
            .map(|(_, b)| b.len().div_ceil(cluster_bytes))
            .sum();
        dirs + files
    }

    /// Smallest volume in bytes that holds the plan with the cluster size mkfs.fat would use.
    fn min_size(&self) -> u64 {
        for spc in [1u64, 8, 16, 32, 64] {
            let total = smallest_total(self.clusters_needed(spc * SECTOR), spc);
            let chosen = cluster_sectors_for(total);
            if chosen == spc {
                return total * SECTOR;
            }
            if chosen > spc {
                continue;
            }
            // Needs bigger clusters than its size implies: grow to where that size starts.
            let mut t = total;
            while cluster_sectors_for(t) < spc {
                t += 2048;
            }
            return t * SECTOR;
        }
        u64::MAX
    }
}

/// Short names for one directory: lossless ones first, then numeric tails in name order, so
/// the result depends only on the set of names.
fn assign_short_names(dir: &Dir) -> Result<Vec<Slot>, FatError> {
    let mut seen_upper = BTreeSet::new();
    for name in dir.children.keys() {
        if !seen_upper.insert(name.to_uppercase()) {
            return Err(FatError::BadName {
                path: join(&dir.path, name),
                reason: "another name in the same directory differs only in case (FAT names are case-insensitive)".into(),
            });
        }
    }
    let mut used: BTreeSet<[u8; 11]> = BTreeSet::new();
    let mut shorts: BTreeMap<&str, [u8; 11]> = BTreeMap::new();
    let bases: Vec<(&str, Vec<u8>, Vec<u8>, bool)> = dir
        .children
        .keys()
        .map(|n| {
            let (b, e, lossy) = short_basis(n);
            (n.as_str(), b, e, lossy)
        })
        .collect();
    for (name, b, e, lossy) in &bases {
        if !lossy {
            let s = pack_short(b, e);
            if used.insert(s) {
                shorts.insert(name, s);
            }
        }
    }
    for (name, b, e, _) in &bases {
        if shorts.contains_key(name) {
            continue;
        }
        let mut n = 1u32;
        let s = loop {
            let tail = format!("~{n}");
            let keep = b.len().min(8 - tail.len());
            let mut base = b[..keep].to_vec();
            base.extend_from_slice(tail.as_bytes());
            let s = pack_short(&base, e);
            if used.insert(s) {
                break s;
            }
            n += 1;
            if n > 999_999 {
                return Err(FatError::BadName {
                    path: join(&dir.path, name),
                    reason: "no free 8.3 short name left in this directory".into(),
                });
            }
        };
        shorts.insert(name, s);
    }
    Ok(dir
        .children
        .iter()
        .map(|(name, child)| {
            let short = shorts[name.as_str()];
            let long = (short_display(&short) != *name).then(|| name.encode_utf16().collect());
            Slot {
                short,
                long,
                child: *child,
            }
        })
        .collect())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn check_label(label: &str) -> Result<[u8; 11], FatError> {
    let ok = label.len() <= 11
        && label.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ' || SHORT_SPECIAL.contains(&b)
        })
        && !label.starts_with(' ');
    if !ok {
        return Err(FatError::BadLabel(label.to_string()));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// DOS time and date (UTC) of `t` seconds since the epoch, clamped to 1980..=2107.
fn dos_time(t: u64) -> (u16, u16) {
    const MIN: u64 = 315_532_800; // 1980-01-01
    const MAX: u64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = t.clamp(MIN, MAX);
    let crate::civil::Civil {
        year,
        month,
        day,
        hour,
        minute,
        second,
    } = crate::civil::from_epoch(t);
    let date = (((year - 1980) as u16) << 9) | ((month as u16) << 5) | day as u16;
    let time = ((hour as u16) << 11) | ((minute as u16) << 5) | (second / 2) as u16;
    (time, date)
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u64, size: u32, time: (u16, u16)) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    let (t, d) = time;
    e[14..16].copy_from_slice(&t.to_le_bytes());
    e[16..18].copy_from_slice(&d.to_le_bytes());
    e[18..20].copy_from_slice(&d.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&t.to_le_bytes());
    e[24..26].copy_from_slice(&d.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Long-name entries for `long`, last part first as they are stored.
fn lfn_entries(long: &[u16], checksum: u8) -> Vec<[u8; 32]> {
    let parts = long.len().div_ceil(LFN_CHARS);
    let mut out = Vec::with_capacity(parts);
    for p in (0..parts).rev() {
        let mut units = [0xFFFFu16; LFN_CHARS];
        for (i, u) in units.iter_mut().enumerate() {
            let k = p * LFN_CHARS + i;
            match k.cmp(&long.len()) {
                std::cmp::Ordering::Less => *u = long[k],
                std::cmp::Ordering::Equal => *u = 0,
                std::cmp::Ordering::Greater => {}
            }
        }
        let mut e = [0u8; 32];
        e[0] = (p + 1) as u8 | if p + 1 == parts { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = checksum;
        let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, o) in units.iter().zip(offsets) {
            e[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// Writes a FAT32 volume of `size` bytes at `offset` in `out` holding `files` (paths like
/// `EFI/BOOT/BOOTX64.EFI`; directories are implied by the paths). Free clusters are not
/// written: the region is expected to be zero (a fresh, sparse image file).
pub fn write(
    files: &[(String, Blob)],
    out: &File,
    offset: u64,
    size: u64,
    opts: &Options,
) -> Result<Stats, FatError> {
    if offset & (SECTOR - 1) != 0 || size & (SECTOR - 1) != 0 {
        return Err(FatError::Unaligned { offset, size });
    }
    let label = check_label(&opts.label)?;
    let has_label = !opts.label.is_empty();
    let plan = Plan::new(files, has_label)?;
    let total = size / SECTOR;
    let spc = cluster_sectors_for(total);
    let geo = match layout(total, spc) {
        Some(g) if g.clusters >= MIN_CLUSTERS => g,
        _ => {
            return Err(FatError::TooSmall {
                size,
                min: smallest_total(0, 1) * SECTOR,
            })
        }
    };
    let cb = geo.cluster_bytes();
    let needed = plan.clusters_needed(cb);
    if needed > geo.clusters {
        return Err(FatError::DoesNotFit {
            needed: plan.min_size(),
            available: size,
        });
    }

    // Contiguous allocation: directories (root first) then files, each in path order.
    let mut fat = vec![0u32; (geo.fat * SECTOR / 4) as usize];
    fat[0] = 0x0FFF_FF00 | 0xF8;
    fat[1] = EOC;
    let mut next = 2u64;
    let mut alloc = |clusters: u64, fat: &mut Vec<u32>| -> u64 {
        if clusters == 0 {
            return 0;
        }
        let first = next;
        for c in first..first + clusters {
            fat[c as usize] = if c + 1 < first + clusters {
                (c + 1) as u32
            } else {
                EOC
            };
        }
        next += clusters;
        first
    };
    let dir_first: Vec<u64> = (0..plan.dirs.len())
        .map(|i| alloc(plan.dir_clusters(i, cb), &mut fat))
        .collect();
    let file_first: Vec<u64> = plan
        .files
        .iter()
        .map(|(_, b)| alloc(b.len().div_ceil(cb), &mut fat))
        .collect();
    let used = next - 2;
    let free = geo.clusters - used;
    let time = dos_time(opts.mtime);

    let put = |buf: &[u8], at: u64, what: &str| -> Result<(), FatError> {
        out.write_all_at(buf, offset + at).map_err(io_err(format!(
            "writing the ESP {what} at byte {}",
            offset + at
        )))
    };

    // Directories.
    for (i, dir) in plan.dirs.iter().enumerate() {
        let mut buf = Vec::with_capacity((plan.dir_clusters(i, cb) * cb) as usize);
        if i == 0 {
            if has_label {
                buf.extend_from_slice(&short_entry(&label, ATTR_VOLUME, 0, 0, time));
            }
        } else {
            let dot = pack_short(b".", b"");
            let dotdot = pack_short(b"..", b"");
            // `..` of a first-level directory is cluster 0, meaning the root.
            let parent = if dir.parent == 0 {
                0
            } else {
                dir_first[dir.parent]
            };
            buf.extend_from_slice(&short_entry(&dot, ATTR_DIR, dir_first[i], 0, time));
            buf.extend_from_slice(&short_entry(&dotdot, ATTR_DIR, parent, 0, time));
        }
        for slot in &dir.slots {
            if let Some(long) = &slot.long {
                for e in lfn_entries(long, lfn_checksum(&slot.short)) {
                    buf.extend_from_slice(&e);
                }
            }
            let e = match slot.child {
                Child::Dir(d) => short_entry(&slot.short, ATTR_DIR, dir_first[d], 0, time),
                Child::File(f) => {
                    let len = plan.files[f].1.len() as u32;
                    short_entry(&slot.short, ATTR_ARCHIVE, file_first[f], len, time)
                }
            };
            buf.extend_from_slice(&e);
        }
        buf.resize((plan.dir_clusters(i, cb) * cb) as usize, 0);
        put(&buf, geo.cluster_offset(dir_first[i]), "directory")?;
    }

    // File contents, streamed; the slack after each file's end is zeroed.
    let wanted: Vec<(usize, &Blob)> = plan
        .files
        .iter()
        .enumerate()
        .filter(|(_, (_, b))| !b.is_empty())
        .map(|(i, (_, b))| (i, *b))
        .collect();
    let mut failure: Option<FatError> = None;
    let mut buf = vec![0u8; 1 << 20];
    let res = Tree::read_blobs(&wanted, &mut |i, r: &mut dyn Read| {
        let (path, blob) = plan.files[i];
        let start = offset + geo.cluster_offset(file_first[i]);
        let expected = blob.len();
        let mut got = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if got + n as u64 > expected {
                got += n as u64;
                break;
            }
            out.write_all_at(&buf[..n], start + got)?;
            got += n as u64;
        }
        if got != expected {
            failure = Some(FatError::Length {
                path: path.to_string(),
                expected,
                got,
            });
            return Err(io::Error::other("length mismatch"));
        }
        let slack = (expected.div_ceil(cb) * cb - expected) as usize;
        out.write_all_at(&vec![0u8; slack], start + expected)?;
        Ok(())
    });
    if let Some(f) = failure {
        return Err(f);
    }
    res.map_err(io_err("writing ESP file contents"))?;

    // FATs.
    let mut fat_bytes = Vec::with_capacity(fat.len() * 4);
    for v in &fat {
        fat_bytes.extend_from_slice(&v.to_le_bytes());
    }
    for n in 0..FATS {
        put(&fat_bytes, (geo.reserved + n * geo.fat) * SECTOR, "FAT")?;
    }

    // Reserved area: boot sector, FSInfo, their backups at 6 and 7.
    let mut reserved = vec![0u8; (geo.reserved * SECTOR) as usize];
    let boot = boot_sector(&geo, offset / SECTOR, opts.volume_id, &label, has_label);
    let info = fsinfo(free, if free > 0 { next } else { u64::from(u32::MAX) });
    for base in [0usize, 6] {
        let b = base * SECTOR as usize;
        reserved[b..b + 512].copy_from_slice(&boot);
        reserved[b + 512..b + 1024].copy_from_slice(&info);
        // Sector 2 of each copy carries only the boot signature, as mkfs.fat writes it.
        reserved[b + 1024 + 510] = 0x55;
        reserved[b + 1024 + 511] = 0xAA;
    }
    put(&reserved, 0, "boot sectors")?;

    Ok(Stats {
        cluster_size: cb,
        clusters: geo.clusters,
        used_clusters: used,
        free_clusters: free,
        fat_sectors: geo.fat,
        files: plan.files.len(),
        dirs: plan.dirs.len() - 1,
    })
}

fn boot_sector(
    geo: &Geometry,
    hidden: u64,
    volume_id: u32,
    label: &[u8; 11],
    has_label: bool,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = geo.spc as u8;
    b[14..16].copy_from_slice(&(geo.reserved as u16).to_le_bytes());
    b[16] = FATS as u8;
    // Root entries 0, total sectors 16 = 0, FAT size 16 = 0: this is what makes it FAT32.
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads
    b[28..32].copy_from_slice(&(hidden.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    b[32..36].copy_from_slice(&(geo.total as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(geo.fat as u32).to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&volume_id.to_le_bytes());
    if has_label {
        b[71..82].copy_from_slice(label);
    } else {
        b[71..82].copy_from_slice(b"NO NAME    ");
    }
    b[82..90].copy_from_slice(b"FAT32   ");
    // Boot code: an endless loop, in case firmware ever jumps here.
    b[90..92].copy_from_slice(&[0xEB, 0xFE]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo(free: u64, next_free: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&(free as u32).to_le_bytes());
    s[492..496].copy_from_slice(&(next_free as u32).to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

/// Smallest FAT32 volume (bytes) that [`write`] accepts for `files`, with the volume label
/// entry counted. Invalid names are reported by [`write`], not here.
pub fn min_size(files: &[(String, Blob)]) -> u64 {
    match Plan::new(files, true) {
        Ok(p) => p.min_size(),
        Err(_) => smallest_total(0, 1) * SECTOR,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

struct Volume<'a> {
    dev: &'a dyn FileExt,
    offset: u64,
    geo: Geometry,
    fat: Vec<u32>,
}

impl Volume<'_> {
    fn chain(&self, first: u64, what: &str) -> Result<Vec<u64>, FatError> {
        let mut out = Vec::new();
        let mut c = first;
        loop {
            if c < 2 || c >= self.geo.clusters + 2 {
                return Err(FatError::Corrupt(format!(
                    "{what}: cluster chain reaches invalid cluster {c}"
                )));
            }
            if out.len() as u64 >= self.geo.clusters {
                return Err(FatError::Corrupt(format!("{what}: cluster chain loops")));
            }
            out.push(c);
            let next = u64::from(self.fat[c as usize] & 0x0FFF_FFFF);
            if next >= 0x0FFF_FFF8 {
                return Ok(out);
            }
            c = next;
        }
    }

    fn read_clusters(&self, chain: &[u64], len: u64, what: &str) -> Result<Vec<u8>, FatError> {
        let cb = self.geo.cluster_bytes();
        let mut out = vec![0u8; len as usize];
        for (chunk, &c) in out.chunks_mut(cb as usize).zip(chain) {
            let at = self.offset + self.geo.cluster_offset(c);
            self.dev
                .read_exact_at(chunk, at)
                .map_err(io_err(format!("reading {what} at byte {at}")))?;
        }
        Ok(out)
    }

    fn walk(
        &self,
        cluster: u64,
        path: &str,
        visited: &mut BTreeSet<u64>,
        out: &mut BTreeMap<String, Vec<u8>>,
        extents: &mut BTreeMap<String, Vec<(u64, u64)>>,
    ) -> Result<(), FatError> {
        let what = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        if !visited.insert(cluster) {
            return Err(FatError::Corrupt(format!("directory {what} appears twice")));
        }
        let chain = self.chain(cluster, &what)?;
        let data =
            self.read_clusters(&chain, chain.len() as u64 * self.geo.cluster_bytes(), &what)?;
        let mut lfn: Vec<u16> = Vec::new();
        let mut lfn_sum: Option<(u8, u8)> = None; // (checksum, next expected ordinal)
        for e in data.chunks_exact(32) {
            match e[0] {
                0 => break,
                0xE5 => {
                    lfn_sum = None;
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3F == ATTR_LFN {
                let ord = e[0] & 0x1F;
                let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                let units: Vec<u16> = offsets
                    .iter()
                    .map(|&o| u16::from_le_bytes([e[o], e[o + 1]]))
                    .collect();
                if e[0] & 0x40 != 0 {
                    lfn = vec![0; ord as usize * LFN_CHARS];
                    lfn_sum = (ord > 0).then_some((e[13], ord));
                }
                match lfn_sum {
                    Some((sum, expect)) if expect == ord && sum == e[13] && ord > 0 => {
                        let at = (ord as usize - 1) * LFN_CHARS;
                        lfn[at..at + LFN_CHARS].copy_from_slice(&units);
                        lfn_sum = Some((sum, ord - 1));
                    }
                    _ => lfn_sum = None,
                }
                continue;
            }
            let mut short = [0u8; 11];
            short.copy_from_slice(&e[..11]);
            let long = match lfn_sum.take() {
                Some((sum, 0)) if sum == lfn_checksum(&short) => {
                    let end = lfn.iter().position(|&u| u == 0).unwrap_or(lfn.len());
                    Some(String::from_utf16_lossy(&lfn[..end]))
                }
                _ => None,
            };
            if attr & ATTR_VOLUME != 0 || &short == b".          " || &short == b"..         " {
                continue;
            }
            let name = long.unwrap_or_else(|| {
                if short[0] == 0x05 {
                    short[0] = 0xE5;
                }
                let (mut b, mut x) = (short[..8].to_vec(), short[8..].to_vec());
                // Windows NT case flags: lower-case base (0x08) and extension (0x10).
                if e[12] & 0x08 != 0 {
                    b.make_ascii_lowercase();
                }
                if e[12] & 0x10 != 0 {
                    x.make_ascii_lowercase();
                }
                let mut s = [0u8; 11];
                s[..8].copy_from_slice(&b);
                s[8..].copy_from_slice(&x);
                short_display(&s)
            });
            let child = join(path, &name);
            let first = u64::from(u16::from_le_bytes([e[20], e[21]])) << 16
                | u64::from(u16::from_le_bytes([e[26], e[27]]));
            if attr & ATTR_DIR != 0 {
                self.walk(first, &child, visited, out, extents)?;
            } else {
                let size = u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]]));
                let bytes = if size == 0 {
                    Vec::new()
                } else {
                    let chain = self.chain(first, &child)?;
                    if (chain.len() as u64) < size.div_ceil(self.geo.cluster_bytes()) {
                        return Err(FatError::Corrupt(format!(
                            "{child}: {size} bytes but only {} clusters allocated",
                            chain.len()
                        )));
                    }
                    let cb = self.geo.cluster_bytes();
                    let ranges = chain
                        .iter()
                        .take(size.div_ceil(cb) as usize)
                        .enumerate()
                        .map(|(i, &c)| {
                            let at = self.offset + self.geo.cluster_offset(c);
                            (at, cb.min(size - i as u64 * cb))
                        })
                        .collect();
                    extents.insert(child.clone(), ranges);
                    self.read_clusters(&chain, size, &child)?
                };
                out.insert(child, bytes);
            }
        }
        Ok(())
    }
}

/// Reads every file of the FAT32 volume of `size` bytes at `offset` in `dev`: path -> bytes.
/// Directories appear only through the paths of the files in them.
pub fn read_all(
    dev: &dyn FileExt,
    offset: u64,
    size: u64,
) -> Result<BTreeMap<String, Vec<u8>>, FatError> {
    Ok(read_located(dev, offset, size)?.files)
}

/// Every file of a volume with where its data lies in `dev`.
#[derive(Debug, Default)]
pub struct Located {
    /// Path -> bytes.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Path -> `(byte offset in dev, length)` of each cluster's used part, in file order
    /// (absent for empty files). Lets a fixed-size file be rewritten in place.
    pub extents: BTreeMap<String, Vec<(u64, u64)>>,
}

/// [`read_all`] with the location of every file's data.
pub fn read_located(dev: &dyn FileExt, offset: u64, size: u64) -> Result<Located, FatError> {
    let mut b = [0u8; 512];
    dev.read_exact_at(&mut b, offset).map_err(io_err(format!(
        "reading the FAT boot sector at byte {offset}"
    )))?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
    if b[510..512] != [0x55, 0xAA] {
        return Err(FatError::Corrupt(
            "boot sector signature 55 AA missing".into(),
        ));
    }
    let bps = u16_at(11);
    let spc = u64::from(b[13]);
    let reserved = u16_at(14);
    let nfats = u64::from(b[16]);
    let total = if u16_at(19) != 0 {
        u16_at(19)
    } else {
        u32_at(32)
    };
    if bps != SECTOR {
        return Err(FatError::Corrupt(format!(
            "{bps} bytes per sector; only 512 is supported"
        )));
    }
    if !spc.is_power_of_two() || spc > 128 || reserved == 0 || nfats == 0 {
        return Err(FatError::Corrupt(format!(
            "implausible BPB: {spc} sectors per cluster, {reserved} reserved sectors, {nfats} FATs"
        )));
    }
    if u16_at(22) != 0 || u16_at(17) != 0 || u32_at(36) == 0 {
        return Err(FatError::Corrupt(
            "this is FAT12/16, not FAT32 (16-bit FAT size or root entries set)".into(),
        ));
    }
    let fat_sectors = u32_at(36);
    if total * SECTOR > size {
        return Err(FatError::Corrupt(format!(
            "the volume claims {} bytes, the region holds {size}",
            total * SECTOR
        )));
    }
    let data = total
        .checked_sub(reserved + nfats * fat_sectors)
        .ok_or_else(|| FatError::Corrupt("FATs larger than the volume".into()))?;
    let clusters = (data / spc).min(fat_sectors * SECTOR / 4 - 2);
    let geo = Geometry {
        total,
        spc,
        reserved,
        fat: fat_sectors,
        clusters,
    };
    // FAT_n copies are meant to be equal; the first is authoritative, as for every driver.
    let mut raw = vec![0u8; ((clusters + 2) * 4) as usize];
    let at = offset + reserved * SECTOR;
    dev.read_exact_at(&mut raw, at)
        .map_err(io_err(format!("reading the FAT at byte {at}")))?;
    let fat = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let vol = Volume {
        dev,
        offset,
        geo,
        fat,
    };
    let mut out = Located::default();
    vol.walk(
        u32_at(44),
        "",
        &mut BTreeSet::new(),
        &mut out.files,
        &mut out.extents,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_size_follows_mkfs_fat() {
        let mib = 2048;
        assert_eq!(cluster_sectors_for(64 * mib), 1);
        assert_eq!(cluster_sectors_for(260 * mib), 1);
        assert_eq!(cluster_sectors_for(260 * mib + 2), 8);
        assert_eq!(cluster_sectors_for(2048 * mib), 8);
    }

    #[test]
    fn layout_fat_covers_clusters() {
        for total in [67_000u64, 131_072, 532_480, 4_194_304] {
            let spc = cluster_sectors_for(total);
            let g = layout(total, spc).unwrap();
            assert!((g.clusters + 2) * 4 <= g.fat * SECTOR);
            // Tight: the unused tail of the FAT is less than the cluster rounding plus a sector.
            assert!(g.fat * SECTOR - (g.clusters + 2) * 4 < (spc + 1) * SECTOR);
            assert_eq!(g.data_start() % (spc * SECTOR), 0);
            assert!(g.data_start() + g.clusters * spc * SECTOR <= total * SECTOR);
        }
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short_basis("BOOTX64.EFI"),
            (b"BOOTX64".to_vec(), b"EFI".to_vec(), false)
        );
        assert_eq!(
            short_basis("loader.conf"),
            (b"LOADER".to_vec(), b"CON".to_vec(), true)
        );
        assert_eq!(
            short_basis(".hidden"),
            (b"HIDDEN".to_vec(), b"".to_vec(), true)
        );
        assert_eq!(
            short_basis("a b.c.d"),
            (b"ABC".to_vec(), b"D".to_vec(), true)
        );
        assert_eq!(short_basis("é+"), (b"__".to_vec(), b"".to_vec(), true));
    }

    #[test]
    fn dos_time_known_values() {
        // 2024-02-29 13:45:30 UTC
        let (t, d) = dos_time(1_709_214_330);
        assert_eq!(d, ((2024 - 1980) << 9) | (2 << 5) | 29);
        assert_eq!(t, (13 << 11) | (45 << 5) | 15);
        assert_eq!(dos_time(0), (0, (1 << 5) | 1));
    }
}
