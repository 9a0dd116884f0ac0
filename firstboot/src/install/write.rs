//! Step 3 of an install: write the raw image onto the chosen disk, verify it, and (at the edge,
//! `main.rs`) add a UEFI boot entry and reboot or power off.
//!
//! The payload is the `iso` output's `/rke2/head.img` (the raw image's bytes before its first
//! partition: protective MBR + primary GPT), `/rke2/esp.img`, `/rke2/root.img` and
//! `/rke2/verity.img`, read from the boot medium by extent ([`Payload`]). The written disk is
//! the raw image as `rke2-init` finds it on a first boot: the image's GPT with its backup moved
//! to the disk's end ([`Table::resize`]), the ESP, root-a and root-a-verity at their partition
//! offsets; root-b and its hash partition stay empty (A/B updates fill them) and the state
//! partition is created by `rke2-init` in the free tail, as on a raw-image node.
//!
//! Order, so that a failure part-way leaves a disk that is obviously not installed (no
//! partition table at all, never a table over half-written partitions):
//!
//! 1. zero the head (MBR, primary GPT) and the last MiB (backup GPT): the disk has no table;
//! 2. write the ESP, root-a and root-a-verity; zero the first MiB of root-b, root-b-verity and
//!    of the free tail (where `rke2-init` creates the state filesystem), so signatures left by a
//!    wiped disk's old contents cannot be taken for ours on the first boot;
//! 3. fsync, then write the GPT (backup first, [`Table::write`]) and fsync again.
//!
//! Verification (after `BLKFLSBUF`, so reads come from the disk, not the page cache): the ESP
//! is compared byte for byte, and root-a is opened through dm-verity with the running image's
//! root hash and read whole ([`verify_root`]): the kernel is the oracle, any EIO fails.
//!
//! A disk already holding this build (same GPT disk GUID, same verity superblock, whose salt
//! and UUID derive from the build seed) is not written again ([`installed`]): a machine that
//! boots the ISO again after its install goes straight to the boot entry and `then`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use rke2_image_contract::gpt::{Table, TableCopy};
use rke2_image_contract::partitions::{self, ALIGN, SECTOR};
use rke2_image_contract::verity;

use super::human;

/// Bytes copied per read/write.
const CHUNK: usize = 4 << 20;

/// `len` bytes at `offset` of the boot medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

/// Where the installer's four files are on the boot medium.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub medium: &'a File,
    pub head: Region,
    pub esp: Region,
    pub root: Region,
    pub verity: Region,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading {what} from the boot medium: {err}; the medium may be damaged, re-create it")]
    Read { what: &'static str, err: io::Error },
    #[error("{0}; the medium does not carry a valid image head (re-create it from the build)")]
    Head(String),
    #[error(
        "{what} ({size}) does not fit its partition {part} ({room}); the medium is not of one \
         build (re-create it)"
    )]
    TooBig {
        what: &'static str,
        size: String,
        part: &'static str,
        room: String,
    },
    #[error("the target disk ({have}) is smaller than the image ({need}); choose a larger disk")]
    Small { have: String, need: String },
    #[error(
        "writing {what} to {disk}: {err}; the disk now has no partition table (nothing boots \
         from it); check the disk and install again"
    )]
    Write {
        what: &'static str,
        disk: String,
        err: io::Error,
    },
    #[error(
        "verifying {disk}: {why}; the disk is not usable, install again (or replace the disk)"
    )]
    Verify { disk: String, why: String },
}

/// A `FileExt` over bytes in memory (the image head), so [`Table::read`] parses it.
struct Mem<'a>(&'a [u8]);

impl FileExt for Mem<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

/// The raw image's partition table, from its head (primary GPT only: the backup is at the raw
/// image's end, which the head does not carry).
pub fn image_table(head: &[u8]) -> Result<Table, WriteError> {
    let hdr = head
        .get(SECTOR as usize..SECTOR as usize + 92)
        .ok_or_else(|| WriteError::Head(format!("head.img is {} bytes", head.len())))?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(WriteError::Head(
            "head.img has no GPT header at LBA 1".into(),
        ));
    }
    let alt = u64::from_le_bytes(hdr[32..40].try_into().unwrap_or_default());
    let size = alt
        .checked_add(1)
        .and_then(|s| s.checked_mul(SECTOR))
        .ok_or_else(|| WriteError::Head(format!("head.img: backup LBA {alt} is not valid")))?;
    let t = Table::read(&Mem(head), size, SECTOR).map_err(|e| WriteError::Head(e.to_string()))?;
    // The backup is expected to be missing; a damaged primary is not.
    if t.damaged.iter().any(|(c, _)| *c == TableCopy::Primary) {
        return Err(WriteError::Head("head.img's primary GPT is damaged".into()));
    }
    Ok(t)
}

/// What goes where on the target: the resized table, the byte offsets of the written
/// partitions and the ranges to zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub table: Table,
    pub esp: u64,
    /// Bytes of the ESP partition (`esp.img` may be shorter: the rest is zeroed).
    pub esp_len: u64,
    pub root: u64,
    pub verity: u64,
    /// (offset, length) ranges zeroed before the GPT is written (stale signatures).
    pub zero: Vec<(u64, u64)>,
}

fn part_region(t: &Table, p: partitions::PartitionSpec) -> Result<(u64, u64), WriteError> {
    let e = t
        .get(p.number)
        .filter(|e| e.name == p.label)
        .ok_or_else(|| {
            WriteError::Head(format!(
                "head.img's GPT has no partition {} \"{}\"",
                p.number, p.label
            ))
        })?;
    Ok((e.first_lba * t.sector_size, e.sectors() * t.sector_size))
}

/// The layout for a disk of `disk_size` bytes, checking the payload fits the image's partitions.
pub fn layout(image: &Table, disk_size: u64, p: &Payload) -> Result<Layout, WriteError> {
    let need = image.disk_sectors * image.sector_size;
    if disk_size < need {
        return Err(WriteError::Small {
            have: human(disk_size),
            need: human(need),
        });
    }
    let mut table = image.clone();
    table.damaged.clear();
    table
        .resize(disk_size)
        .map_err(|e| WriteError::Head(e.to_string()))?;
    let esp = part_region(&table, partitions::ESP)?;
    let root = part_region(&table, partitions::ROOT_A)?;
    let ver = part_region(&table, partitions::ROOT_A_VERITY)?;
    for (what, r, part, room) in [
        ("esp.img", p.esp, "esp", esp),
        ("root.img", p.root, "root-a", root),
        ("verity.img", p.verity, "root-a-verity", ver),
    ] {
        if r.len > room.1 {
            return Err(WriteError::TooBig {
                what,
                size: human(r.len),
                part,
                room: human(room.1),
            });
        }
    }
    if p.head.len != esp.0 {
        return Err(WriteError::Head(format!(
            "head.img is {} bytes, the first partition starts at byte {}",
            p.head.len, esp.0
        )));
    }
    let mut zero = Vec::new();
    for spec in [partitions::ROOT_B, partitions::ROOT_B_VERITY] {
        let (off, len) = part_region(&table, spec)?;
        zero.push((off, len.min(ALIGN)));
    }
    let (tail, last) = table.free_tail();
    if tail <= last {
        let off = tail * table.sector_size;
        zero.push((off, ((last + 1 - tail) * table.sector_size).min(ALIGN)));
    }
    Ok(Layout {
        table,
        esp: esp.0,
        esp_len: esp.1,
        root: root.0,
        verity: ver.0,
        zero,
    })
}

/// Has `disk` (`disk_size` bytes) this build already: the image's disk GUID and, at root-a-verity,
/// the payload's verity superblock.
pub fn installed(disk: &File, disk_size: u64, image: &Table, p: &Payload) -> bool {
    let Ok(t) = Table::read(disk, disk_size, SECTOR) else {
        return false;
    };
    if t.disk_guid != image.disk_guid || !t.damaged.is_empty() {
        return false;
    }
    let Ok((off, _)) = part_region(&t, partitions::ROOT_A_VERITY) else {
        return false;
    };
    let n = verity::SUPERBLOCK_SIZE as usize;
    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
    disk.read_exact_at(&mut a, off).is_ok()
        && p.medium.read_exact_at(&mut b, p.verity.offset).is_ok()
        && a == b
}

/// Reads the head from the medium.
pub fn read_head(p: &Payload) -> Result<Vec<u8>, WriteError> {
    let mut head = vec![0u8; p.head.len as usize];
    p.medium
        .read_exact_at(&mut head, p.head.offset)
        .map_err(|err| WriteError::Read {
            what: "head.img",
            err,
        })?;
    Ok(head)
}

/// Writes the image onto `disk` (named `name` in messages) in the order documented on this
/// module; `progress` gets one line per step. Returns the bytes written.
pub fn write(
    disk: &File,
    name: &str,
    l: &Layout,
    p: &Payload,
    progress: &mut dyn FnMut(&str),
) -> Result<u64, WriteError> {
    let werr = |what: &'static str| {
        let disk = name.to_string();
        move |err| WriteError::Write {
            what,
            disk: disk.clone(),
            err,
        }
    };
    let size = l.table.disk_sectors * l.table.sector_size;
    // 1. No table while the partitions are being written.
    zero(disk, 0, p.head.len).map_err(werr("zeros over the old partition table"))?;
    let end = size.saturating_sub(ALIGN).max(p.head.len);
    zero(disk, end, size - end).map_err(werr("zeros over the old backup table"))?;
    // 2. The partitions' contents.
    let mut written = 0;
    for (what, r, at) in [
        ("the ESP", p.esp, l.esp),
        ("root-a", p.root, l.root),
        ("root-a-verity", p.verity, l.verity),
    ] {
        progress(&format!("writing {what} ({}) to {name}", human(r.len)));
        copy(p.medium, r, disk, at, what, name)?;
        written += r.len;
    }
    // The ESP's free clusters, which the medium does not carry (zeros in the raw image).
    zero(disk, l.esp + p.esp.len, l.esp_len - p.esp.len)
        .map_err(werr("zeros over the rest of the ESP"))?;
    for (off, len) in &l.zero {
        zero(disk, *off, *len).map_err(werr("zeros over stale signatures"))?;
    }
    disk.sync_all().map_err(werr("the partitions (fsync)"))?;
    // 3. The table last.
    progress(&format!("writing the partition table to {name}"));
    l.table.write(disk).map_err(|e| WriteError::Write {
        what: "the partition table",
        disk: name.to_string(),
        err: io::Error::other(e.to_string()),
    })?;
    disk.sync_all()
        .map_err(werr("the partition table (fsync)"))?;
    Ok(written + p.head.len)
}

fn zero(disk: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // `<linux/fs.h>` BLKZEROOUT, `_IO(0x12, 127)`: the device zeroes the range itself (virtio
    // and NVMe write-zeroes); not a block device (a file in tests): plain writes.
    const BLKZEROOUT: libc::Ioctl = 0x127f;
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length).
    if unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(disk),
            BLKZEROOUT,
            range.as_ptr(),
        )
    } == 0
    {
        return Ok(());
    }
    let buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        disk.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn copy(
    from: &File,
    r: Region,
    to: &File,
    at: u64,
    what: &'static str,
    name: &str,
) -> Result<(), WriteError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    while done < r.len {
        let n = (r.len - done).min(CHUNK as u64) as usize;
        from.read_exact_at(&mut buf[..n], r.offset + done)
            .map_err(|err| WriteError::Read { what, err })?;
        to.write_all_at(&buf[..n], at + done)
            .map_err(|err| WriteError::Write {
                what,
                disk: name.to_string(),
                err,
            })?;
        done += n as u64;
    }
    Ok(())
}

/// Compares the written ESP with the payload's, and the written table with the layout's.
pub fn verify_esp_and_table(
    disk: &File,
    name: &str,
    l: &Layout,
    p: &Payload,
) -> Result<(), WriteError> {
    let verr = |why: String| WriteError::Verify {
        disk: name.to_string(),
        why,
    };
    let size = l.table.disk_sectors * l.table.sector_size;
    let t = Table::read(disk, size, SECTOR).map_err(|e| verr(format!("partition table: {e}")))?;
    if t != l.table {
        return Err(verr(
            "the partition table read back differs from the one written".into(),
        ));
    }
    let (mut a, mut b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut done = 0;
    while done < p.esp.len {
        let n = (p.esp.len - done).min(CHUNK as u64) as usize;
        p.medium
            .read_exact_at(&mut a[..n], p.esp.offset + done)
            .map_err(|err| WriteError::Read {
                what: "esp.img",
                err,
            })?;
        disk.read_exact_at(&mut b[..n], l.esp + done)
            .map_err(|e| verr(format!("reading the ESP back: {e}")))?;
        if a[..n] != b[..n] {
            return Err(verr(format!(
                "the ESP read back differs from esp.img near byte {}",
                done
            )));
        }
        done += n as u64;
    }
    Ok(())
}

/// Opens root-a of `disk` (`major:minor` in `dev`) through dm-verity with `root_hash` and reads
/// it whole. Uses dm-linear maps of the two regions (no partition nodes needed) and removes every
/// map it made.
pub fn verify_root(
    dev: &str,
    name: &str,
    l: &Layout,
    p: &Payload,
    root_hash: &[u8; 32],
) -> Result<(), WriteError> {
    let verr = |why: String| WriteError::Verify {
        disk: name.to_string(),
        why,
    };
    let mut sb = vec![0u8; verity::SUPERBLOCK_SIZE as usize];
    p.medium
        .read_exact_at(&mut sb, p.verity.offset)
        .map_err(|err| WriteError::Read {
            what: "verity.img",
            err,
        })?;
    let params = verity::Superblock::parse(&sb).map_err(|e| verr(format!("verity.img: {e}")))?;
    verify_verity(
        "rke2-install",
        (dev, l.root, p.root.len),
        (dev, l.verity, p.verity.len),
        &params,
        root_hash,
        "root-a does not match the running image's root hash",
    )
    .map_err(verr)
}

/// Maps the data region `data` and the hash region `hash` (each `major:minor`, byte offset,
/// length) with dm-linear, opens them through dm-verity with `root_hash` and reads the whole
/// data through the kernel: the kernel is the oracle, any EIO fails with `mismatch`. Device-mapper
/// names start with `prefix`; every map made is removed again.
pub fn verify_verity(
    prefix: &str,
    data: (&str, u64, u64),
    hash: (&str, u64, u64),
    params: &verity::Params,
    root_hash: &[u8; 32],
    mismatch: &str,
) -> Result<(), String> {
    use crate::init::dm;
    let up = prefix.to_ascii_uppercase();
    let maps = [
        (format!("{prefix}-root"), data),
        (format!("{prefix}-hash"), hash),
    ];
    let mut made: Vec<String> = Vec::new();
    let r = (|| {
        let mut nodes = Vec::new();
        for (map, (dev, off, len)) in &maps {
            let (ma, mi) = dm::create_readonly(
                map,
                &format!("{up}-{map}"),
                len / SECTOR,
                "linear",
                &format!("{dev} {}", off / SECTOR),
            )?;
            made.push(map.clone());
            nodes.push(format!("{ma}:{mi}"));
        }
        let line = verity::table(params, &nodes[0], &nodes[1], root_hash);
        let (sectors, ttype, args) = crate::init::split_table(&line)
            .ok_or_else(|| format!("bad dm-verity table {line:?}"))?;
        let vname = format!("{prefix}-verity");
        let (ma, mi) = dm::create_readonly(&vname, &format!("{up}-VERITY"), sectors, ttype, args)?;
        made.push(vname);
        let node = format!("/dev/dm-{mi}");
        wait_node(&node).map_err(|e| format!("{node} ({ma}:{mi}): {e}"))?;
        let f = File::open(&node).map_err(|e| format!("opening {node}: {e}"))?;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0;
        let total = params.data_size();
        while done < total {
            let n = (total - done).min(CHUNK as u64) as usize;
            f.read_exact_at(&mut buf[..n], done)
                .map_err(|e| format!("{mismatch} at byte {done} ({e})"))?;
            done += n as u64;
        }
        Ok(())
    })();
    for m in made.iter().rev() {
        let _ = dm::remove(m);
    }
    r
}

fn wait_node(node: &str) -> io::Result<()> {
    for _ in 0..100 {
        if std::path::Path::new(node).exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no device node"))
}

/// Seconds since `t`, for the progress lines.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl From<WriteError> for String {
    fn from(e: WriteError) -> String {
        e.to_string()
    }
}
