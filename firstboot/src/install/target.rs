//! Which disk an install may write: candidate discovery from a sysfs root and a `/dev` root
//! (both passed in), the refusals, and the one-disk-or-stop selection.
//!
//! Devices considered: every entry of `<sys>/class/block` that is not a partition. Optical
//! drives (`sr*`), RAM disks (`ram*`, `zram*`) and eMMC boot/RPMB areas are always refused; loop, device-mapper
//! (`dm-*`), md RAID (`md*`) and network block devices (`nbd*`) are never picked by `auto` but
//! may be named explicitly (installing onto a multipath map `/dev/dm-N` or `/dev/mapper/<name>`
//! is the right way to use a SAN disk). Empty loop/RAM devices (size 0) are not listed at all.
//!
//! Nothing here writes; the device is only opened for reading its first and last sectors.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{human, InstallRequest, TargetSpec};

/// What kind of block device, from its kernel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Disk,
    Optical,
    Ram,
    Loop,
    DeviceMapper,
    Md,
    Nbd,
    /// An eMMC's boot or RPMB area (`mmcblk0boot0`, `mmcblk0rpmb`): firmware's, not a disk.
    EmmcArea,
}

impl Kind {
    fn of(name: &str) -> Kind {
        let p = |pre: &str| {
            name.strip_prefix(pre)
                .is_some_and(|r| r.bytes().next().is_some_and(|b| b.is_ascii_digit()))
        };
        if name.starts_with("mmcblk") && (name.contains("boot") || name.ends_with("rpmb")) {
            Kind::EmmcArea
        } else if p("sr") {
            Kind::Optical
        } else if p("ram") || p("zram") {
            Kind::Ram
        } else if p("loop") {
            Kind::Loop
        } else if p("dm-") {
            Kind::DeviceMapper
        } else if p("md") {
            Kind::Md
        } else if p("nbd") {
            Kind::Nbd
        } else {
            Kind::Disk
        }
    }
}

/// One whole block device and the facts the refusals need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    pub kind: Kind,
    /// Bytes (sysfs `size` is always in 512-byte sectors).
    pub size: u64,
    pub removable: bool,
    /// Attached through USB (sysfs path runs through a USB device): many USB disks report
    /// `removable` 0, so `auto` treats them as removable too.
    pub usb: bool,
    pub read_only: bool,
    pub model: String,
    pub serial: String,
    pub wwn: String,
    /// Names of the `/dev/disk/by-id` links to this disk, sorted.
    pub by_id: Vec<String>,
    /// Partition kernel names, sorted.
    pub partitions: Vec<String>,
    /// Holders (of the disk or its partitions) that are not multipath maps: `dm-3`, `md0`.
    pub holders: Vec<String>,
    /// The multipath map (`/dev/dm-N (/dev/mapper/<name>)`) this disk is a path of.
    pub multipath: Option<String>,
    /// Kernel name of that map (`dm-N`).
    pub multipath_dev: Option<String>,
    /// Mount points of the disk, its partitions or their holders.
    pub mounted: Vec<String>,
    /// Signatures found in the first and last sectors (see [`SIGNATURES`]).
    pub signatures: Vec<&'static str>,
    /// Why the data could not be read (then the disk is refused).
    pub unreadable: Option<String>,
    /// This is the medium the system booted from.
    pub boot_medium: bool,
}

impl Disk {
    /// `/dev/<name>`, the name operators know (never the passed-in root).
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// `/dev/vda 20 GiB model "QEMU HARDDISK" serial "S1"`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.path(), human(self.size));
        if !self.model.is_empty() {
            s += &format!(" model {:?}", self.model);
        }
        if !self.serial.is_empty() {
            s += &format!(" serial {:?}", self.serial);
        }
        if !self.wwn.is_empty() {
            s += &format!(" wwn {}", self.wwn);
        }
        s
    }
}

/// Everything the selection reads, passed in (no global paths).
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Root of sysfs (`/sys` on a node).
    pub sys: &'a Path,
    /// Root of devtmpfs (`/dev` on a node); devices are read at `<dev>/<name>`.
    pub dev: &'a Path,
    /// Text of `/proc/self/mountinfo`.
    pub mountinfo: &'a str,
    /// Kernel name of the boot medium (disk or partition), when booted from one.
    pub boot_device: Option<&'a str>,
    /// Bytes the image needs; a smaller disk is refused.
    pub image_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot list block devices in {path}: {err}")]
    Sysfs { path: String, err: std::io::Error },
    #[error(
        "install target {spec} (from {key}): no such disk. Fix: name one of the disks present, or \
         check the cabling/controller if the disk is missing. Disks present:\n{present}"
    )]
    NotFound {
        spec: String,
        key: String,
        present: String,
    },
    #[error(
        "install target {spec} (from {key}) is partition {part} of {disk}: name the whole disk \
         ({disk}); the installer writes its own partition table"
    )]
    Partition {
        spec: String,
        key: String,
        part: String,
        disk: String,
    },
    #[error("install target {spec} (from {key}) refuses {disk}:\n{reasons}")]
    Refused {
        spec: String,
        key: String,
        disk: String,
        reasons: String,
    },
    #[error(
        "install target {spec} (from {key}) matches {count} disks; refusing to guess. Fix: name \
         one by /dev/disk/by-id/<id> or its path.\n{list}"
    )]
    Several {
        spec: String,
        key: String,
        count: usize,
        list: String,
    },
    #[error(
        "install target auto (from {key}): {summary}; auto takes the only non-removable disk with \
         no partitions and no filesystem, within the size range. Fix: name the disk by \
         /dev/disk/by-id/<id>, wwn:<wwn> or serial:<serial> (and set wipe if it holds data you \
         mean to lose).\n{list}"
    )]
    Auto {
        key: String,
        summary: String,
        list: String,
    },
}

/// One filesystem or partition-table signature: `magic` at byte `offset` from the start of
/// the device (or, for `from_end`, at `offset` bytes before its end).
pub struct Signature {
    pub name: &'static str,
    pub offset: u64,
    pub magic: &'static [u8],
}

/// Signatures checked in the first [`HEAD_BYTES`] of a device. GPT and MBR need more than a
/// magic and are checked in code ([`scan`]).
#[rustfmt::skip]
pub const SIGNATURES: &[Signature] = &[
    // Linux fs/ext4/ext4.h: superblock at 1024, s_magic (0xEF53, LE) at offset 0x38.
    Signature { name: "ext2/3/4 filesystem", offset: 1024 + 0x38, magic: &[0x53, 0xEF] },
    // Linux fs/xfs/libxfs/xfs_format.h: XFS_SB_MAGIC "XFSB" at the start of sector 0.
    Signature { name: "XFS filesystem", offset: 0, magic: b"XFSB" },
    // Linux fs/btrfs (BTRFS_SUPER_INFO_OFFSET 64 KiB; magic "_BHRfS_M" at 0x40 in the super).
    Signature { name: "Btrfs filesystem", offset: 0x10040, magic: b"_BHRfS_M" },
    // Linux fs/erofs/erofs_fs.h: EROFS_SUPER_OFFSET 1024, EROFS_SUPER_MAGIC_V1 0xE0F5E1E2 LE.
    Signature { name: "EROFS filesystem", offset: 1024, magic: &[0xE2, 0xE1, 0xF5, 0xE0] },
    // ECMA-119 8.1: first volume descriptor at sector 16 (2048-byte sectors), "CD001" at +1.
    Signature { name: "ISO 9660 filesystem", offset: 16 * 2048 + 1, magic: b"CD001" },
    // Linux include/linux/swap.h: "SWAPSPACE2" in the last 10 bytes of the first page
    // (4 KiB pages here; 64 KiB-page swap is also checked below).
    Signature { name: "Linux swap", offset: 4096 - 10, magic: b"SWAPSPACE2" },
    Signature { name: "Linux swap", offset: 65536 - 10, magic: b"SWAPSPACE2" },
    // lvm2 lib/label/label.h: LABEL_ID "LABELONE" in one of the first 4 sectors (sector 1 by
    // default), type "LVM2 001" at +24 (lib/format_text/layout.h).
    Signature { name: "LVM2 physical volume", offset: 512 + 24, magic: b"LVM2 001" },
    Signature { name: "LVM2 physical volume", offset: 24, magic: b"LVM2 001" },
    Signature { name: "LVM2 physical volume", offset: 1024 + 24, magic: b"LVM2 001" },
    Signature { name: "LVM2 physical volume", offset: 1536 + 24, magic: b"LVM2 001" },
    // cryptsetup lib/luks1/luks.h LUKS_MAGIC (LUKS2 keeps it): "LUKS\xba\xbe" at 0; the LUKS2
    // secondary header "SKUL\xba\xbe" at 16 KiB survives a wiped primary.
    Signature { name: "LUKS encrypted volume", offset: 0, magic: b"LUKS\xba\xbe" },
    Signature { name: "LUKS encrypted volume", offset: 0x4000, magic: b"SKUL\xba\xbe" },
    // Linux drivers/md/md-p.h MD_SB_MAGIC 0xa92b4efc LE: v1.1 superblock at 0, v1.2 at 4 KiB.
    Signature { name: "Linux RAID member", offset: 0, magic: &[0xfc, 0x4e, 0x2b, 0xa9] },
    Signature { name: "Linux RAID member", offset: 4096, magic: &[0xfc, 0x4e, 0x2b, 0xa9] },
    // Microsoft FAT specification (fatgen103) BS_FilSysType: at 0x36 (FAT12/16), 0x52 (FAT32).
    Signature { name: "FAT filesystem", offset: 0x36, magic: b"FAT1" },
    Signature { name: "FAT filesystem", offset: 0x52, magic: b"FAT32" },
];

/// Bytes read from the start of a device: covers every [`SIGNATURES`] entry and a GPT header
/// at LBA 1 of a 4096-byte-sector disk.
pub const HEAD_BYTES: usize = 0x20000;
const TAIL_BYTES: u64 = 4096;

/// Signatures in a device's first [`HEAD_BYTES`] (`head`) and last 4 KiB (`tail`), with its
/// logical sector size. Sorted, without repeats.
pub fn scan(head: &[u8], tail: &[u8], sector: usize) -> Vec<&'static str> {
    let at = |buf: &[u8], off: usize, magic: &[u8]| {
        buf.get(off..off + magic.len()).is_some_and(|b| b == magic)
    };
    let mut found = BTreeSet::new();
    for s in SIGNATURES {
        if at(head, s.offset as usize, s.magic) {
            found.insert(s.name);
        }
    }
    // UEFI 2.10 §5.3.2: "EFI PART" at the start of LBA 1; the backup header is the last LBA.
    if at(head, sector, b"EFI PART") {
        found.insert("GPT partition table");
    } else if tail.len() >= sector && at(tail, tail.len() - sector, b"EFI PART") {
        found.insert("GPT partition table (backup header only)");
    }
    // MBR (UEFI 2.10 §5.2.1): 0x55AA at 510 and a non-empty entry (type at +4 of each 16-byte
    // entry from 446). A FAT boot sector has 0x55AA too and code where the table would be.
    // A GPT's protective MBR (type 0xEE) is part of the GPT, not a second table.
    let other = found
        .iter()
        .any(|f| f.starts_with("FAT") || f.starts_with("GPT"));
    if !other && at(head, 510, &[0x55, 0xAA]) && (0..4).any(|i| head[446 + 16 * i + 4] != 0) {
        found.insert("MBR partition table");
    }
    found.into_iter().collect()
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn flag(p: &Path) -> bool {
    read_trim(p).as_deref() == Some("1")
}

/// Serial of a SCSI disk from its Unit Serial Number VPD page (SPC-4 7.8.18: page code 0x80,
/// length at byte 3, the ASCII serial from byte 4).
fn vpd_pg80_serial(b: &[u8]) -> Option<String> {
    if b.len() < 4 || b[1] != 0x80 {
        return None;
    }
    let len = b[3] as usize;
    let s = String::from_utf8_lossy(b.get(4..4 + len)?)
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// Major:minor -> mount points, from mountinfo (field 3 is the mounted device's number).
fn mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let devno = f.nth(2)?.to_string();
            let point = f.nth(1)?.to_string();
            Some((devno, point))
        })
        .collect()
}

/// Reads the first and last bytes of `dev`, `size` bytes long.
fn read_ends(dev: &Path, size: u64) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut f = fs::File::open(dev)?;
    let mut head = vec![0u8; HEAD_BYTES.min(size as usize)];
    f.read_exact(&mut head)?;
    let tail_len = TAIL_BYTES.min(size);
    f.seek(SeekFrom::Start(size - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    Ok((head, tail))
}

/// Serial and WWN of the disk at sysfs directory `d` (empty when it has none).
fn identity(d: &Path) -> (String, String) {
    let dev_dir = d.join("device");
    let serial = read_trim(&d.join("serial"))
        .or_else(|| read_trim(&dev_dir.join("serial")))
        .or_else(|| {
            fs::read(dev_dir.join("vpd_pg80"))
                .ok()
                .and_then(|b| vpd_pg80_serial(&b))
        })
        .unwrap_or_default();
    let wwn = read_trim(&dev_dir.join("wwid"))
        .or_else(|| read_trim(&d.join("wwid")))
        .unwrap_or_default();
    (serial, wwn)
}

/// Normalises a WWN for comparison: lower case, without `0x`, `naa.`, `eui.`, `wwn-` prefixes.
fn norm_wwn(w: &str) -> String {
    let w = w.trim().to_ascii_lowercase();
    let mut w = w.as_str();
    for pre in ["wwn-", "0x", "naa.", "eui.", "t10."] {
        w = w.strip_prefix(pre).unwrap_or(w);
    }
    w.to_string()
}

/// What is built on a disk: its holders, transitively (dm-verity over a partition, LVM over
/// md, ...).
struct Stack {
    /// Holders that are not the multipath map of a path.
    holders: BTreeSet<String>,
    /// (`dm-N`, `/dev/dm-N (/dev/mapper/<name>)`) when the disk is a path of a multipath map.
    multipath: Option<(String, String)>,
    /// `major:minor` of the disk, its partitions and every holder (for mountinfo).
    devnos: BTreeSet<String>,
    /// Every holder's kernel name.
    seen: BTreeSet<String>,
}

/// Walks the holders of `dirs` (the disk's and its partitions' sysfs directories), bounded.
/// `is_dm`: the disk is itself a device-mapper device (a multipath map's holders are its
/// partition mappings, not a map of which it is a path).
fn stack(class: &Path, is_dm: bool, mut queue: Vec<PathBuf>) -> Stack {
    let mut st = Stack {
        holders: BTreeSet::new(),
        multipath: None,
        devnos: BTreeSet::new(),
        seen: BTreeSet::new(),
    };
    while let Some(dir) = queue.pop() {
        if st.seen.len() > 64 {
            break;
        }
        if let Some(dev) = read_trim(&dir.join("dev")) {
            st.devnos.insert(dev);
        }
        for h in fs::read_dir(dir.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let hn = h.file_name().to_string_lossy().into_owned();
            if !st.seen.insert(hn.clone()) {
                continue;
            }
            let hd = class.join(&hn);
            let uuid = read_trim(&hd.join("dm/uuid")).unwrap_or_default();
            if uuid.starts_with("mpath-") && !is_dm {
                let dm = read_trim(&hd.join("dm/name")).unwrap_or_default();
                st.multipath = Some((hn.clone(), format!("/dev/{hn} (/dev/mapper/{dm})")));
            } else {
                st.holders.insert(hn);
            }
            queue.push(hd);
        }
    }
    st
}

/// Every whole block device under `<sys>/class/block`, sorted by name, with its facts.
pub fn discover(inp: &Inputs<'_>) -> Result<Vec<Disk>, TargetError> {
    let class = inp.sys.join("class/block");
    let rd = fs::read_dir(&class).map_err(|err| TargetError::Sysfs {
        path: "/sys/class/block".into(),
        err,
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mounts = mounts(inp.mountinfo);
    let by_id = by_id_links(inp.dev);
    let mut out = Vec::new();
    for name in names {
        let d = class.join(&name);
        if d.join("partition").exists() {
            continue;
        }
        let kind = Kind::of(&name);
        let size = read_trim(&d.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(512);
        if size == 0 && matches!(kind, Kind::Loop | Kind::Ram) {
            continue;
        }
        // Partitions are subdirectories of the disk's directory that have a `partition` file.
        let mut partitions: Vec<String> = fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        partitions.sort();
        let stack = stack(
            &class,
            kind == Kind::DeviceMapper,
            std::iter::once(d.clone())
                .chain(partitions.iter().map(|p| d.join(p)))
                .collect(),
        );
        let mut mounted: Vec<String> = mounts
            .iter()
            .filter(|(devno, _)| stack.devnos.contains(devno))
            .map(|(_, p)| p.clone())
            .collect();
        mounted.sort();
        mounted.dedup();
        let dev_dir = d.join("device");
        // A multipath map has the WWN and serial of its paths (all paths are the same LUN).
        let mpath_map = read_trim(&d.join("dm/uuid")).is_some_and(|u| u.starts_with("mpath-"));
        let first_path = mpath_map
            .then(|| {
                let mut names: Vec<_> = fs::read_dir(d.join("slaves"))
                    .ok()?
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                names.sort();
                names.first().map(|n| class.join(n))
            })
            .flatten();
        let (serial, wwn) = identity(&d);
        let (serial, wwn) = match &first_path {
            Some(p) if serial.is_empty() && wwn.is_empty() => identity(p),
            _ => (serial, wwn),
        };
        let usb = fs::canonicalize(&d).is_ok_and(|p| {
            p.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with("usb"))
        });
        let sector = read_trim(&d.join("queue/logical_block_size"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| (512..=4096).contains(s))
            .unwrap_or(512);
        let (signatures, unreadable) = if size == 0 {
            (Vec::new(), None)
        } else {
            match read_ends(&inp.dev.join(&name), size) {
                Ok((h, t)) => (scan(&h, &t, sector), None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        };
        // The boot medium, one of its partitions, or a mapping over it (an ISO's regions).
        let boot_medium = inp.boot_device.is_some_and(|b| {
            b == name || partitions.iter().any(|p| p == b) || stack.seen.contains(b)
        });
        out.push(Disk {
            by_id: by_id
                .iter()
                .filter(|(_, t)| *t == name)
                .map(|(l, _)| l.clone())
                .collect(),
            name,
            kind,
            size,
            removable: flag(&d.join("removable")),
            usb,
            read_only: flag(&d.join("ro")),
            model: read_trim(&dev_dir.join("model")).unwrap_or_default(),
            serial,
            wwn,
            partitions,
            holders: stack.holders.into_iter().collect(),
            multipath: stack.multipath.as_ref().map(|(_, shown)| shown.clone()),
            multipath_dev: stack.multipath.map(|(dev, _)| dev),
            mounted,
            signatures,
            unreadable,
            boot_medium,
        });
    }
    Ok(out)
}

/// `/dev/disk/by-id` link name -> kernel name it points to, sorted by link name.
fn by_id_links(dev: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dev.join("disk/by-id"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = fs::read_link(e.path()).ok()?;
            let target = t.file_name()?.to_string_lossy().into_owned();
            Some((e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect();
    v.sort();
    v
}

/// Resolves a `/dev/...` path inside the `/dev` root to a kernel name, following symlinks the
/// way udev writes them (relative `../../vda`, or absolute `/dev/...`), at most 8 hops.
fn resolve_path(dev: &Path, spec: &str) -> Option<String> {
    let mut rel = PathBuf::from(spec.strip_prefix("/dev/")?);
    for _ in 0..8 {
        let full = dev.join(&rel);
        match fs::read_link(&full) {
            Ok(t) => {
                let joined = match t.strip_prefix("/dev") {
                    Ok(r) => r.to_path_buf(),
                    Err(_) if t.is_absolute() => return None,
                    Err(_) => rel.parent().unwrap_or(Path::new("")).join(t),
                };
                // Normalise `..` without touching the real filesystem.
                let mut n = PathBuf::new();
                for c in joined.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            n.pop();
                        }
                        std::path::Component::Normal(p) => n.push(p),
                        _ => {}
                    }
                }
                rel = n;
            }
            Err(_) => return Some(rel.to_string_lossy().into_owned()),
        }
    }
    None
}

/// Why `disk` may not be written for `req` (empty: it may). `auto` adds the refusals only
/// `auto` has (removable, USB, device kinds never guessed) and ignores `wipe`.
pub fn refusals(disk: &Disk, req: &InstallRequest, image_size: u64) -> Vec<String> {
    let auto = req.target == TargetSpec::Auto;
    let mut r = Vec::new();
    // `auto` takes blank disks only, whatever `wipe` says: wiping is for a disk someone named.
    let wipe_fix = if auto {
        "auto only takes blank disks; name this disk and set install.wipe: true to overwrite it"
    } else {
        "set install.wipe: true (or boot with rke2.install.wipe=1) to overwrite it"
    };
    let wipe = req.wipe && !auto;
    if disk.boot_medium {
        r.push("it is the medium this system booted from".to_string());
    }
    match disk.kind {
        Kind::Optical => r.push("it is an optical drive".into()),
        Kind::Ram => r.push("it is a RAM disk (its contents vanish at power-off)".into()),
        Kind::EmmcArea => {
            r.push("it is an eMMC boot or RPMB area, not the eMMC's user area".into())
        }
        Kind::Loop | Kind::DeviceMapper | Kind::Md | Kind::Nbd if auto => r.push(format!(
            "{} devices are only used when named explicitly",
            match disk.kind {
                Kind::Loop => "loop",
                Kind::DeviceMapper => "device-mapper",
                Kind::Md => "md RAID",
                _ => "network block",
            }
        )),
        _ => {}
    }
    if let Some(m) = &disk.multipath {
        r.push(format!(
            "it is one path of multipath device {m}; name the multipath device instead"
        ));
    }
    if !disk.mounted.is_empty() {
        r.push(format!("it is mounted (at {})", disk.mounted.join(", ")));
    }
    if !disk.holders.is_empty() {
        r.push(format!(
            "it is in use by {} (device-mapper or RAID on top of it)",
            disk.holders
                .iter()
                .map(|h| format!("/dev/{h}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if disk.read_only {
        r.push("it is read-only".into());
    }
    if disk.size == 0 {
        r.push("it has no medium (size 0)".into());
    }
    if let Some(e) = &disk.unreadable {
        r.push(format!(
            "its first and last sectors cannot be read to check for data ({e})"
        ));
    }
    if !disk.partitions.is_empty() && !wipe {
        r.push(format!(
            "it has partitions ({}); {wipe_fix}",
            disk.partitions.join(", ")
        ));
    }
    if !disk.signatures.is_empty() && !wipe {
        r.push(format!(
            "it holds {}; {wipe_fix}",
            disk.signatures.join(", ")
        ));
    }
    if disk.size > 0 && disk.size < image_size {
        r.push(format!(
            "it is smaller than the image ({} needed)",
            human(image_size)
        ));
    }
    if let Some(min) = req.min_size.filter(|m| disk.size < *m) {
        r.push(format!(
            "it is smaller than install.min-size {}",
            human(min)
        ));
    }
    if let Some(max) = req.max_size.filter(|m| disk.size > *m) {
        r.push(format!("it is larger than install.max-size {}", human(max)));
    }
    if auto && disk.removable {
        r.push("it is removable (auto never picks removable media; name it to use it)".into());
    } else if auto && disk.usb {
        r.push("it is attached through USB (auto never picks USB disks; name it to use it)".into());
    }
    r
}

fn listing(disks: &[&Disk], reasons: impl Fn(&Disk) -> String) -> String {
    disks
        .iter()
        .map(|d| format!("  {}: {}", d.describe(), reasons(d)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one disk `req` names, or why there is none. Never a first match: a spec that matches
/// several disks, or `auto` with zero or several qualifying disks, stops listing each one.
pub fn select(req: &InstallRequest, inp: &Inputs<'_>) -> Result<Disk, TargetError> {
    let disks = discover(inp)?;
    let spec = req.target.to_string();
    let key = req.target_key.clone();
    let refused = |d: &Disk| refusals(d, req, inp.image_size);
    let matched: Vec<&Disk> = match &req.target {
        TargetSpec::Auto => {
            let ok: Vec<&Disk> = disks.iter().filter(|d| refused(d).is_empty()).collect();
            if ok.len() == 1 {
                return Ok(ok[0].clone());
            }
            let all: Vec<&Disk> = disks.iter().collect();
            let list = listing(&all, |d| {
                let r = refused(d);
                if r.is_empty() {
                    "qualifies (ambiguous: more than one disk qualifies)".into()
                } else {
                    format!("refused: {}", r.join("; "))
                }
            });
            let summary = if ok.is_empty() {
                format!("no disk qualifies among {}", disks.len())
            } else {
                format!("{} disks qualify; refusing to guess", ok.len())
            };
            return Err(TargetError::Auto {
                key,
                summary,
                list: if disks.is_empty() {
                    "  (no block devices found)".into()
                } else {
                    list
                },
            });
        }
        TargetSpec::Path(p) => {
            let Some(name) = resolve_path(inp.dev, p) else {
                return Err(not_found(&spec, &key, &disks));
            };
            // A partition: say so rather than "no such disk".
            let class = inp.sys.join("class/block");
            if class.join(&name).join("partition").exists() {
                let disk = disks
                    .iter()
                    .find(|d| d.partitions.contains(&name))
                    .map(Disk::path)
                    .unwrap_or_else(|| "its disk".into());
                return Err(TargetError::Partition {
                    spec,
                    key,
                    part: format!("/dev/{name}"),
                    disk,
                });
            }
            disks.iter().filter(|d| d.name == name).collect()
        }
        TargetSpec::Wwn(w) => {
            let w = norm_wwn(w);
            disks
                .iter()
                .filter(|d| {
                    (!d.wwn.is_empty() && norm_wwn(&d.wwn) == w)
                        || d.by_id
                            .iter()
                            .any(|l| l.starts_with("wwn-") && norm_wwn(l) == w)
                })
                .collect()
        }
        TargetSpec::Serial(s) => disks
            .iter()
            .filter(|d| !d.serial.is_empty() && d.serial == s.trim())
            .collect(),
    };
    // The paths of a multipath map share its WWN and serial: when the map matches too, the map
    // is the one disk meant (writing a single path would bypass multipathing).
    let maps: BTreeSet<&str> = matched.iter().map(|d| d.name.as_str()).collect();
    let matched: Vec<&Disk> = matched
        .iter()
        .copied()
        .filter(|d| !d.multipath_dev.as_deref().is_some_and(|m| maps.contains(m)))
        .collect();
    match matched.as_slice() {
        [] => Err(not_found(&spec, &key, &disks)),
        [d] => {
            let r = refused(d);
            if r.is_empty() {
                Ok((*d).clone())
            } else {
                Err(TargetError::Refused {
                    spec,
                    key,
                    disk: d.describe(),
                    reasons: r
                        .iter()
                        .map(|x| format!("  - {x}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                })
            }
        }
        several => Err(TargetError::Several {
            spec,
            key,
            count: several.len(),
            list: listing(several, |d| {
                let r = refused(d);
                if r.is_empty() {
                    "matches".into()
                } else {
                    format!("matches; refused: {}", r.join("; "))
                }
            }),
        }),
    }
}

fn not_found(spec: &str, key: &str, disks: &[Disk]) -> TargetError {
    TargetError::NotFound {
        spec: spec.into(),
        key: key.into(),
        present: if disks.is_empty() {
            "  (no block devices found)".into()
        } else {
            disks
                .iter()
                .map(|d| format!("  {}", d.describe()))
                .collect::<Vec<_>>()
                .join("\n")
        },
    }
}
