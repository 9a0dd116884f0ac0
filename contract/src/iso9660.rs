//! Just enough ISO 9660 (ECMA-119) to find a file's bytes on a medium: the primary volume
//! descriptor at 32 KiB, then the directory records along a path. `rke2-init` uses it to find
//! the root and its hash tree on the `iso` output's medium (a CD drive has no partition devices,
//! and the initrd has no ISO 9660 mount helper to spare), then maps the extents with dm-linear.
//! The builder's `iso customize` and the agent's `medium` source use it to find the embed area
//! (see [`crate::embed`]); it lives here so both sides read the directory the same way.
//!
//! Only the ISO 9660 names are read (no Rock Ridge or Joliet): the files the builder places
//! there have 8.3 names, which every ISO 9660 level spells the same way up to case. A file may
//! span several directory records (multi-extent, for files of 4 GiB and more); its extents
//! must follow each other on the medium so one linear mapping covers them.

use std::fmt;
use std::os::unix::fs::FileExt;

/// Sector of the first volume descriptor (byte 32768), in 2048-byte sectors.
const FIRST_DESCRIPTOR: u64 = 16;
const DESCRIPTOR_SIZE: usize = 2048;
/// More descriptors than any real medium has before its terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// A directory larger than this is not one the builder wrote.
const MAX_DIR: u64 = 16 << 20;
const FLAG_DIR: u8 = 0x02;
const FLAG_MORE: u8 = 0x80;

/// Where a file's bytes are on the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset from the start of the medium.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

#[derive(Debug)]
pub enum IsoError {
    Io(std::io::Error),
    /// No primary volume descriptor (`CD001`) at 32 KiB: not an ISO 9660 medium.
    NotIso,
    Malformed(String),
    NotFound(String),
}

impl fmt::Display for IsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsoError::Io(e) => write!(f, "read error: {e}"),
            IsoError::NotIso => write!(f, "no ISO 9660 volume descriptor at 32 KiB"),
            IsoError::Malformed(m) => write!(f, "malformed ISO 9660 medium: {m}"),
            IsoError::NotFound(p) => write!(f, "no file {p} on the ISO 9660 medium"),
        }
    }
}

impl std::error::Error for IsoError {}

fn read(dev: &dyn FileExt, offset: u64, len: usize) -> Result<Vec<u8>, IsoError> {
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, offset).map_err(IsoError::Io)?;
    Ok(buf)
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

/// One directory record: where its data is, how long, its flags and its ISO 9660 name.
#[derive(Debug, Clone)]
struct Record {
    lba: u64,
    len: u64,
    flags: u8,
    name: Vec<u8>,
}

fn parse_record(r: &[u8]) -> Result<Record, IsoError> {
    if r.len() < 34 {
        return Err(IsoError::Malformed(format!(
            "directory record of {} bytes",
            r.len()
        )));
    }
    let name_len = r[32] as usize;
    if 33 + name_len > r.len() {
        return Err(IsoError::Malformed(format!(
            "directory record name of {name_len} bytes overruns its {}-byte record",
            r.len()
        )));
    }
    Ok(Record {
        lba: le32(r, 2),
        len: le32(r, 10),
        flags: r[25],
        name: r[33..33 + name_len].to_vec(),
    })
}

/// The volume: its logical block size and root directory record.
struct Volume {
    block: u64,
    blocks: u64,
    root: Record,
}

fn volume(dev: &dyn FileExt) -> Result<Volume, IsoError> {
    for i in 0..MAX_DESCRIPTORS {
        let d = read(
            dev,
            (FIRST_DESCRIPTOR + i) * DESCRIPTOR_SIZE as u64,
            DESCRIPTOR_SIZE,
        )?;
        if &d[1..6] != b"CD001" || d[6] != 1 {
            return Err(IsoError::NotIso);
        }
        match d[0] {
            1 => {
                let block = u16::from_le_bytes([d[128], d[129]]) as u64;
                if !(512..=2048).contains(&block) || !block.is_power_of_two() {
                    return Err(IsoError::Malformed(format!(
                        "logical block size {block} (expected 512, 1024 or 2048)"
                    )));
                }
                let blocks = le32(&d, 80);
                let root = parse_record(&d[156..190])?;
                return Ok(Volume {
                    block,
                    blocks,
                    root,
                });
            }
            255 => break,
            _ => {}
        }
    }
    Err(IsoError::NotIso)
}

/// `NAME.EXT;1` (or `NAME.;1`) compared with `want` ignoring case, the version and a
/// trailing dot.
fn name_matches(iso: &[u8], want: &str) -> bool {
    let base = match iso.iter().position(|b| *b == b';') {
        Some(i) => &iso[..i],
        None => iso,
    };
    let base = base.strip_suffix(b".").unwrap_or(base);
    base.eq_ignore_ascii_case(want.as_bytes())
}

/// The records of the directory `dir` named `want`, in order (more than one for a
/// multi-extent file).
fn lookup(
    dev: &dyn FileExt,
    vol: &Volume,
    dir: &Record,
    want: &str,
) -> Result<Vec<Record>, IsoError> {
    if dir.len > MAX_DIR {
        return Err(IsoError::Malformed(format!(
            "a directory of {} bytes",
            dir.len
        )));
    }
    let data = read(dev, dir.lba * vol.block, dir.len as usize)?;
    let mut found: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = data[at] as usize;
        if len == 0 {
            // Records never cross a sector: the rest of this one is padding.
            at = (at / DESCRIPTOR_SIZE + 1) * DESCRIPTOR_SIZE;
            continue;
        }
        if at + len > data.len() {
            return Err(IsoError::Malformed(
                "a directory record runs past its directory".into(),
            ));
        }
        let r = parse_record(&data[at..at + len])?;
        at += len;
        let continuing = found.last().is_some_and(|l| l.flags & FLAG_MORE != 0);
        if continuing || (found.is_empty() && name_matches(&r.name, want)) {
            found.push(r);
            if found.last().is_some_and(|l| l.flags & FLAG_MORE == 0) {
                return Ok(found);
            }
        }
    }
    if found.is_empty() {
        Err(IsoError::NotFound(want.into()))
    } else {
        Err(IsoError::Malformed(format!(
            "{want}: its last extent is missing"
        )))
    }
}

/// Where the regular file `path` (absolute, `/`-separated) is on the medium `dev`. The extents
/// of a multi-extent file must be contiguous; every byte must lie inside the volume.
pub fn find(dev: &dyn FileExt, path: &str) -> Result<Extent, IsoError> {
    let vol = volume(dev)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((file, dirs)) = parts.split_last() else {
        return Err(IsoError::NotFound(path.into()));
    };
    let mut dir = vol.root.clone();
    for d in dirs {
        let r = lookup(dev, &vol, &dir, d).map_err(|e| match e {
            IsoError::NotFound(_) => IsoError::NotFound(path.into()),
            e => e,
        })?;
        if r[0].flags & FLAG_DIR == 0 {
            return Err(IsoError::NotFound(path.into()));
        }
        dir = r[0].clone();
    }
    let recs = lookup(dev, &vol, &dir, file).map_err(|e| match e {
        IsoError::NotFound(_) => IsoError::NotFound(path.into()),
        e => e,
    })?;
    if recs.iter().any(|r| r.flags & FLAG_DIR != 0) {
        return Err(IsoError::NotFound(path.into()));
    }
    let start = recs[0].lba * vol.block;
    let mut end = start;
    for r in &recs {
        if r.lba * vol.block != end {
            return Err(IsoError::Malformed(format!(
                "{path}: its extents are not contiguous"
            )));
        }
        end += r.len;
    }
    if end > vol.blocks * vol.block {
        return Err(IsoError::Malformed(format!(
            "{path}: ends at byte {end}, past the volume's {} bytes",
            vol.blocks * vol.block
        )));
    }
    Ok(Extent {
        offset: start,
        len: end - start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        rke2_testsupport::noise(seed | 1, n)
    }

    /// Oracle: xorriso writes the image; the extents must hold the files' bytes.
    fn xorriso(dir: &Path, out: &Path, extra: &[&str]) {
        rke2_testsupport::iso::mkisofs(dir, out, extra).unwrap();
    }

    #[test]
    fn finds_files_in_xorriso_images() {
        if !rke2_testsupport::prereq::program("xorriso", "xorriso") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("rke2")).unwrap();
        fs::create_dir_all(tree.join("other/deeper")).unwrap();
        // Many entries (8.3 names: longer ones are mangled in the ISO 9660 tree) so the rke2
        // directory spans more than one sector.
        for i in 0..60 {
            fs::write(tree.join(format!("rke2/pad{i:03}.txt")), b"x").unwrap();
        }
        let root = noise(3 * 4096 + 100, 7);
        let verity = noise(8192, 9);
        fs::write(tree.join("rke2/root.img"), &root).unwrap();
        fs::write(tree.join("rke2/verity.img"), &verity).unwrap();
        fs::write(tree.join("other/deeper/root.img"), b"decoy").unwrap();
        fs::write(tree.join("empty"), b"").unwrap();
        // A plain image, and a hybrid one with an appended FAT partition and El Torito, as
        // the `iso` output is written.
        let esp = t.path().join("esp.img");
        fs::write(&esp, vec![0u8; 1 << 20]).unwrap();
        let esp_s = esp.to_str().unwrap();
        for (name, extra) in [
            ("plain.iso", vec![]),
            (
                "hybrid.iso",
                vec![
                    "-partition_offset",
                    "16",
                    "-append_partition",
                    "2",
                    "0xef",
                    esp_s,
                    "-appended_part_as_gpt",
                    "-e",
                    "--interval:appended_partition_2:all::",
                    "-no-emul-boot",
                ],
            ),
        ] {
            let iso = t.path().join(name);
            xorriso(&tree, &iso, &extra);
            let f = fs::File::open(&iso).unwrap();
            for (path, want) in [
                ("/rke2/root.img", &root[..]),
                ("/rke2/verity.img", &verity[..]),
                ("/RKE2/ROOT.IMG", &root[..]),
                ("/other/deeper/root.img", b"decoy"),
                ("/rke2/pad059.txt", b"x"),
            ] {
                let e = find(&f, path).unwrap_or_else(|e| panic!("{name} {path}: {e}"));
                assert_eq!(e.len, want.len() as u64, "{name} {path}");
                assert_eq!(e.offset % 2048, 0);
                let mut got = vec![0u8; want.len()];
                f.read_exact_at(&mut got, e.offset).unwrap();
                assert_eq!(got, want, "{name} {path}");
            }
            assert_eq!(find(&f, "/empty").unwrap().len, 0);
            for missing in ["/rke2/root.verity", "/rke2", "/nope/root.img", "/", ""] {
                assert!(
                    matches!(find(&f, missing), Err(IsoError::NotFound(_))),
                    "{name} {missing}: {:?}",
                    find(&f, missing)
                );
            }
        }
    }

    #[test]
    fn refuses_what_is_not_an_iso() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("blank");
        fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let f = fs::File::open(&p).unwrap();
        assert!(matches!(find(&f, "/rke2/root.img"), Err(IsoError::NotIso)));
        // Too short to hold a descriptor: a read error, not a panic.
        fs::write(&p, vec![0u8; 1000]).unwrap();
        let f = fs::File::open(&p).unwrap();
        assert!(matches!(find(&f, "/rke2/root.img"), Err(IsoError::Io(_))));
    }

    /// A hand-made volume: a multi-extent file whose extents follow each other is one
    /// extent; a gap between them, a record overrunning its directory, and an extent past
    /// the volume's end are refused.
    #[test]
    fn multi_extent_and_corrupt_records() {
        fn record(lba: u32, len: u32, flags: u8, name: &[u8]) -> Vec<u8> {
            let mut r = vec![0u8; 33 + name.len() + (name.len() + 1) % 2];
            r[0] = r.len() as u8;
            r[2..6].copy_from_slice(&lba.to_le_bytes());
            r[10..14].copy_from_slice(&len.to_le_bytes());
            r[25] = flags;
            r[32] = name.len() as u8;
            r[33..33 + name.len()].copy_from_slice(name);
            r
        }
        fn image(second_lba: u32, blocks: u32, overrun: bool) -> Vec<u8> {
            let mut img = vec![0u8; 40 * 2048];
            let pvd = &mut img[16 * 2048..17 * 2048];
            pvd[0] = 1;
            pvd[1..6].copy_from_slice(b"CD001");
            pvd[6] = 1;
            pvd[80..84].copy_from_slice(&blocks.to_le_bytes());
            pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
            let term = &mut img[17 * 2048..18 * 2048];
            term[0] = 255;
            term[1..6].copy_from_slice(b"CD001");
            term[6] = 1;
            let mut dir = Vec::new();
            dir.extend(record(20, 2048, FLAG_DIR, &[0]));
            dir.extend(record(20, 2048, FLAG_DIR, &[1]));
            dir.extend(record(30, 4096, FLAG_MORE, b"BIG.IMG;1"));
            dir.extend(record(second_lba, 2048, 0, b"BIG.IMG;1"));
            // Overrun: the directory ends inside its last record.
            let dir_len = if overrun { dir.len() - 10 } else { 2048 };
            img[16 * 2048 + 156..16 * 2048 + 190].copy_from_slice(&record(
                20,
                dir_len as u32,
                FLAG_DIR,
                &[0],
            ));
            img[20 * 2048..20 * 2048 + dir.len()].copy_from_slice(&dir);
            img
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("img");
        let open = |img: Vec<u8>| {
            fs::write(&p, img).unwrap();
            fs::File::open(&p).unwrap()
        };
        let f = open(image(32, 40, false));
        assert_eq!(
            find(&f, "/big.img").unwrap(),
            Extent {
                offset: 30 * 2048,
                len: 3 * 2048
            }
        );
        let f = open(image(33, 40, false));
        assert!(find(&f, "/big.img")
            .unwrap_err()
            .to_string()
            .contains("not contiguous"));
        let f = open(image(32, 32, false));
        assert!(find(&f, "/big.img")
            .unwrap_err()
            .to_string()
            .contains("past the volume"));
        let f = open(image(32, 40, true));
        assert!(matches!(find(&f, "/big.img"), Err(IsoError::Malformed(_))));
    }
}
