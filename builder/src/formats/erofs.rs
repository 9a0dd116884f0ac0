//! EROFS writer (uncompressed, 4 KiB blocks), on-disk format of Linux 6.1 / erofs-utils 1.5.
//!
//! [`plan`] computes the whole layout from the tree alone (inode placement, nids, data block
//! addresses, directory sizes); [`write`] then renders metadata block by block and streams file
//! contents once through [`Tree::read_blobs`], so memory depends on the number of inodes, never
//! on file contents.
//!
//! Layout: block 0 holds the superblock at 1024 and, after it, only inodes whose bytes are all
//! known before file contents are read (so the superblock checksum, which covers the rest of
//! block 0, can be computed up front). Inodes (core + inline xattrs + inline tail) follow in
//! 32-byte slots packed best-fit into metadata blocks; whole data blocks come after the
//! metadata, in the order of each inode's first path.
//!
//! Compressed roots ([`Compression`], format in [`crate::erofs_z`]) share that path; only file
//! data differs. Since a file's shape (compressed or flat) and block count are known only once
//! it is compressed, file data comes first (from block 1, in the order the tree's contents are
//! read, compressed on every core but placed strictly in that order, so the bytes do not depend
//! on the thread count); the same planner then lays out the metadata after it, with every byte
//! known, and directories and symlinks after the metadata.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, Mutex};

use crate::erofs_z::{self, BlockSink, Compressed};
use crate::lz4::{self, Compressor};
use crate::tree::{split_parent, Blob, InodeId, Kind, Tree};

pub const BLOCK_SIZE: u64 = 4096;
const BLKSZ: usize = 4096;
const BLKSZBITS: u8 = 12;
const SUPER_OFFSET: usize = 1024;
const SUPER_SIZE: usize = 128;
const MAGIC: u32 = 0xE0F5_E1E2;
const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;
const FEATURE_COMPAT_MTIME: u32 = 0x2;
/// First slot after the superblock: nids count 32-byte slots from the start of block 0.
const FIRST_NID_BLOCK0: u64 = ((SUPER_OFFSET + SUPER_SIZE) / SLOT) as u64;
const SLOT: usize = 32;
const SLOTS_PER_BLOCK: usize = BLKSZ / SLOT;
const COMPACT_SIZE: usize = 32;
const EXTENDED_SIZE: usize = 64;
const XATTR_HEADER: usize = 12;
const DIRENT_SIZE: usize = 12;
const NULL_ADDR: u32 = u32::MAX;
const MAX_NAME_LEN: usize = 255;

const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;
const LAYOUT_COMPRESSION: u16 = 3;
const FEATURE_INCOMPAT_LZ4_0PADDING: u32 = 0x1;
/// Files up to this size are read whole and compressed on a worker thread; larger ones are
/// spooled to a temporary file and compressed in place of the reader.
const PARALLEL_MAX: u64 = 32 << 20;
/// Bytes of file contents read ahead for the workers.
const IN_FLIGHT_MAX: u64 = 64 << 20;

const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const FT_CHRDEV: u8 = 3;
const FT_BLKDEV: u8 = 4;
const FT_FIFO: u8 = 5;
const FT_SOCK: u8 = 6;
const FT_SYMLINK: u8 = 7;

static ZERO_BLOCK: [u8; BLKSZ] = [0; BLKSZ];

/// Copy buffer for file contents (bounded memory whatever the file sizes).
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub uuid: [u8; 16],
    /// At most 16 bytes.
    pub volume_name: String,
    /// Seconds since the epoch; inodes with exactly this mtime get the compact form.
    pub build_time: u64,
}

/// How file data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// LZ4, fast compressor.
    Lz4,
    /// LZ4HC at a level 1..=12 (both read by the same kernel decompressor).
    Lz4hc(u8),
}

impl Compression {
    fn level(self) -> Option<lz4::Level> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some(lz4::Level::Fast),
            Compression::Lz4hc(l) => Some(lz4::Level::High(l)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("EROFS image needs {needed} bytes ({} MiB) but only {available} are available; enlarge the partition", needed.div_ceil(1 << 20))]
    TooLarge { needed: u64, available: u64 },
    #[error("EROFS volume name {name:?} is {len} bytes; at most 16 are allowed")]
    VolumeName { name: String, len: usize },
    #[error("{path}: file name is {len} bytes; EROFS allows at most 255")]
    NameTooLong { path: String, len: usize },
    #[error("{path}: xattr {name:?} has no EROFS name prefix (user., trusted., security., system.posix_acl_*); remove it from the tree")]
    XattrPrefix { path: String, name: String },
    #[error("{path}: xattr {name:?} is too large for EROFS (name {name_len} bytes, max 255; value {value_len} bytes, max 65535)")]
    XattrTooLarge {
        path: String,
        name: String,
        name_len: usize,
        value_len: usize,
    },
    #[error("{path}: inline xattrs take {len} bytes; EROFS allows at most {max}")]
    XattrsTooLarge {
        path: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{path}: device number {major}:{minor} does not fit (major <= 4095, minor <= 1048575)"
    )]
    DeviceNumber {
        path: String,
        major: u32,
        minor: u32,
    },
    #[error("EROFS image would need {blocks} blocks; block addresses are 32 bits")]
    TooManyBlocks { blocks: u64 },
    #[error("the tree changed after the EROFS layout was planned ({detail}); plan again")]
    PlanMismatch { detail: String },
    #[error("{path}: content ended after {got} of {expected} bytes")]
    ShortRead {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn show(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

/// Where an inode's bytes go.
#[derive(Debug, Clone)]
struct Placed {
    id: InodeId,
    /// First path naming the inode (for error messages and reading order).
    path: Vec<u8>,
    nid: u64,
    ino: u32,
    extended: bool,
    inline: bool,
    /// `stat` size: content length, symlink target length or directory size.
    size: u64,
    nlink: u32,
    /// Inode core + xattr body (+ alignment, map header and indexes when compressed), before
    /// any inline tail.
    meta_len: usize,
    /// Inode core + xattr body.
    ibody: usize,
    /// Position in the metadata area (32-byte slots, as if metadata started at block 0).
    vnid: u64,
    /// Data blocks of a compressed file (its `i_u`), None when stored flat.
    zblocks: Option<u32>,
    /// Inline tail length (0 unless `inline`).
    tail_len: usize,
    /// First data block, or NULL_ADDR when there is none.
    blkaddr: u32,
    /// Whole blocks in the data area (the last one zero padded for FLAT_PLAIN).
    nblocks: u64,
}

/// Layout computed from the tree (no file content read).
#[derive(Debug, Clone)]
pub struct Plan {
    /// In nid order.
    placed: Vec<Placed>,
    /// InodeId -> index into `placed`.
    by_id: Vec<Option<usize>>,
    root_nid: u16,
    meta_blocks: u64,
    /// File data blocks written before the metadata (compressed builds), from block 1.
    data_blocks: u64,
    total_blocks: u64,
    opts: Options,
    compression: Compression,
    /// Compressed files: their indexes.
    zfiles: HashMap<InodeId, Compressed>,
}

impl Plan {
    /// Bytes the image will occupy (a multiple of 4096).
    pub fn size(&self) -> u64 {
        self.total_blocks * BLOCK_SIZE
    }

    /// Number of inodes the image will hold.
    pub fn inodes(&self) -> u64 {
        self.placed.len() as u64
    }

    /// Block holding metadata block `vblock` (block 0 stays first; the rest follow file data).
    fn meta_block(&self, vblock: u64) -> u64 {
        if vblock == 0 {
            0
        } else {
            vblock + self.data_blocks
        }
    }

    fn by_id(&self, id: InodeId) -> Result<&Placed, ErofsError> {
        self.by_id
            .get(id)
            .copied()
            .flatten()
            .map(|i| &self.placed[i])
            .ok_or_else(|| ErofsError::PlanMismatch {
                detail: format!("inode {id} was not planned"),
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub blocks: u64,
    pub inodes: u64,
}

/// Name index and remaining name of a full xattr name, as the kernel's prefix table has them.
fn xattr_prefix(name: &[u8]) -> Option<(u8, &[u8])> {
    const FULL: [(&[u8], u8); 2] = [
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
    ];
    for (full, idx) in FULL {
        if name == full {
            return Some((idx, b""));
        }
    }
    const PREFIXES: [(&[u8], u8); 4] = [
        (b"user.", 1),
        (b"trusted.", 4),
        (b"lustre.", 5),
        (b"security.", 6),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p) && name.len() > p.len())
        .map(|&(p, idx)| (idx, &name[p.len()..]))
}

/// The inline xattr body (header + entries), empty when the inode has no xattrs.
fn xattr_body(path: &[u8], inode: &crate::tree::Inode) -> Result<Vec<u8>, ErofsError> {
    if inode.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; XATTR_HEADER];
    for (name, value) in &inode.xattrs {
        let (idx, suffix) = xattr_prefix(name).ok_or_else(|| ErofsError::XattrPrefix {
            path: show(path),
            name: String::from_utf8_lossy(name).into_owned(),
        })?;
        if suffix.len() > MAX_NAME_LEN || value.len() > u16::MAX as usize {
            return Err(ErofsError::XattrTooLarge {
                path: show(path),
                name: String::from_utf8_lossy(name).into_owned(),
                name_len: suffix.len(),
                value_len: value.len(),
            });
        }
        out.push(suffix.len() as u8);
        out.push(idx);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    // i_xattr_icount is a u16 counting the header as one unit plus 4-byte words.
    let max = XATTR_HEADER + 4 * (u16::MAX as usize - 1);
    if out.len() > max {
        return Err(ErofsError::XattrsTooLarge {
            path: show(path),
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

fn xattr_icount(body_len: usize) -> u16 {
    if body_len == 0 {
        0
    } else {
        ((body_len - XATTR_HEADER) / 4 + 1) as u16
    }
}

fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir => FT_DIR,
        Kind::File(_) => FT_REG_FILE,
        Kind::Symlink(_) => FT_SYMLINK,
        Kind::CharDev { .. } => FT_CHRDEV,
        Kind::BlockDev { .. } => FT_BLKDEV,
        Kind::Fifo => FT_FIFO,
        Kind::Socket => FT_SOCK,
    }
}

/// Linux `new_encode_dev`: 12-bit major, 20-bit minor.
fn encode_dev(path: &[u8], major: u32, minor: u32) -> Result<u32, ErofsError> {
    if major > 0xfff || minor > 0xf_ffff {
        return Err(ErofsError::DeviceNumber {
            path: show(path),
            major,
            minor,
        });
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// Splits a directory's entries (already sorted, `.` and `..` included) into blocks: returns
/// the index of the first entry of each block and the directory size.
fn pack_dir<'a>(names: impl Iterator<Item = &'a [u8]>) -> (Vec<usize>, u64) {
    let mut starts = vec![0];
    let mut used = 0usize;
    for (i, name) in names.enumerate() {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLKSZ {
            starts.push(i);
            used = 0;
        }
        used += need;
    }
    let size = (starts.len() as u64 - 1) * BLOCK_SIZE + used as u64;
    (starts, size)
}

/// A directory's entries in on-disk order: `.`, `..` and the children, sorted by name bytes
/// across all of them (the kernel binary-searches the names).
fn dir_entries<'a>(
    tree: &Tree,
    path: &'a [u8],
    children: &[(&'a [u8], InodeId)],
) -> Result<Vec<(&'a [u8], InodeId)>, ErofsError> {
    let me = tree.lookup(path).ok_or_else(|| ErofsError::PlanMismatch {
        detail: format!("directory {} vanished", show(path)),
    })?;
    let parent = if path.is_empty() {
        me
    } else {
        tree.lookup(split_parent(path).0)
            .ok_or_else(|| ErofsError::PlanMismatch {
                detail: format!("parent of {} vanished", show(path)),
            })?
    };
    let mut out = Vec::with_capacity(children.len() + 2);
    out.push((&b"."[..], me));
    out.push((&b".."[..], parent));
    out.extend_from_slice(children);
    out.sort_by(|a, b| a.0.cmp(b.0));
    Ok(out)
}

/// Best-fit allocator of 32-byte slots in metadata blocks.
struct SlotAlloc {
    /// free slot count -> blocks with exactly that many free slots at their end.
    buckets: Vec<BTreeSet<u64>>,
    /// Next free slot of each block.
    next: Vec<usize>,
}

impl SlotAlloc {
    fn new() -> SlotAlloc {
        SlotAlloc {
            buckets: vec![BTreeSet::new(); SLOTS_PER_BLOCK + 1],
            next: vec![FIRST_NID_BLOCK0 as usize],
        }
    }

    fn set_free(&mut self, block: u64, next: usize) {
        self.next[block as usize] = next;
        if block != 0 && next < SLOTS_PER_BLOCK {
            self.buckets[SLOTS_PER_BLOCK - next].insert(block);
        }
    }

    /// Places `slots` slots and returns the first nid. Items that may go into block 0 (whose
    /// bytes are known before file contents are streamed) try it first.
    fn alloc(&mut self, slots: usize, block0_ok: bool) -> u64 {
        if block0_ok && self.next[0] + slots <= SLOTS_PER_BLOCK {
            let nid = self.next[0] as u64;
            self.next[0] += slots;
            return nid;
        }
        if slots <= SLOTS_PER_BLOCK {
            for free in slots..=SLOTS_PER_BLOCK {
                if let Some(block) = self.buckets[free].pop_first() {
                    let start = self.next[block as usize];
                    self.set_free(block, start + slots);
                    return block * SLOTS_PER_BLOCK as u64 + start as u64;
                }
            }
        }
        // Fresh block(s); an item larger than a block spans several.
        let first = self.next.len() as u64;
        let span = slots.div_ceil(SLOTS_PER_BLOCK);
        for _ in 0..span {
            self.next.push(SLOTS_PER_BLOCK);
        }
        let last = first + span as u64 - 1;
        let used_in_last = slots - (span - 1) * SLOTS_PER_BLOCK;
        self.set_free(last, used_in_last);
        first * SLOTS_PER_BLOCK as u64
    }

    fn blocks(&self) -> u64 {
        self.next.len() as u64
    }
}

/// How the data pass of a compressed build stored each file.
#[derive(Debug, Default)]
struct Shapes {
    /// Blocks written from block 1.
    data_blocks: u64,
    /// Compressed files: first block and indexes.
    compressed: HashMap<InodeId, (u32, Compressed)>,
    /// Flat files whose whole blocks were written: first block.
    flat: HashMap<InodeId, u32>,
}

/// Computes the layout of `tree` as an EROFS image. With compression, the size is that of the
/// uncompressed layout (an upper bound); [`write`] lays the image out again once files are
/// compressed.
pub fn plan(tree: &Tree, opts: &Options) -> Result<Plan, ErofsError> {
    plan_compressed(tree, opts, Compression::None)
}

/// [`plan`] for an image whose file data is stored with `compression`.
pub fn plan_compressed(
    tree: &Tree,
    opts: &Options,
    compression: Compression,
) -> Result<Plan, ErofsError> {
    plan_with(tree, opts, compression, None)
}

fn plan_with(
    tree: &Tree,
    opts: &Options,
    compression: Compression,
    shapes: Option<Shapes>,
) -> Result<Plan, ErofsError> {
    if opts.volume_name.len() > 16 {
        return Err(ErofsError::VolumeName {
            name: opts.volume_name.clone(),
            len: opts.volume_name.len(),
        });
    }
    let nlinks = tree.nlinks();
    let children = tree.children();
    let mut order = tree.unique_inodes();
    // The root goes first so that its nid fits the superblock's u16.
    let root = tree.root();
    if let Some(pos) = order.iter().position(|&(_, id)| id == root) {
        let r = order.remove(pos);
        order.insert(0, r);
    }

    let mut alloc = SlotAlloc::new();
    let mut placed = Vec::with_capacity(order.len());
    let mut by_id: Vec<Option<usize>> = vec![None; nlinks.len()];
    for (ino, &(path, id)) in order.iter().enumerate() {
        let inode = tree.inode(id);
        let size = match &inode.kind {
            Kind::Dir => {
                let kids = children.get(path).map(Vec::as_slice).unwrap_or(&[]);
                for (name, _) in kids {
                    if name.len() > MAX_NAME_LEN {
                        return Err(ErofsError::NameTooLong {
                            path: show(&crate::tree::join(path, name)),
                            len: name.len(),
                        });
                    }
                }
                let entries = dir_entries(tree, path, kids)?;
                pack_dir(entries.iter().map(|e| e.0)).1
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                encode_dev(path, *major, *minor)?;
                0
            }
            _ => inode.size(),
        };
        let nlink = nlinks[id];
        let extended = inode.mtime != opts.build_time
            || inode.uid > u16::MAX as u32
            || inode.gid > u16::MAX as u32
            || nlink > u16::MAX as u32
            || size > u32::MAX as u64;
        let xattr_len = xattr_body(path, inode)?.len();
        let ibody = if extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        } + xattr_len;
        let mut meta_len = ibody;
        // The tail is what is left after the whole blocks; it has to fit in the inode's block.
        let tail = size % BLOCK_SIZE;
        let mut inline = tail != 0 && meta_len + tail as usize <= BLKSZ;
        let mut nblocks = if inline {
            size / BLOCK_SIZE
        } else {
            size.div_ceil(BLOCK_SIZE)
        };
        let mut blkaddr = NULL_ADDR;
        let mut zblocks = None;
        if let Some(sh) = &shapes {
            if let Some((start, z)) = sh.compressed.get(&id) {
                meta_len = ibody.next_multiple_of(8) + erofs_z::extent_len(size, ibody);
                inline = false;
                nblocks = 0;
                blkaddr = *start;
                zblocks = Some(z.blocks);
            } else if let Some(&start) = sh.flat.get(&id) {
                blkaddr = start;
            }
        }
        let tail_len = if inline { tail as usize } else { 0 };
        let slots = (meta_len + tail_len).div_ceil(SLOT);
        // With compression every byte is known before metadata is written.
        let block0_ok = shapes.is_some() || !(inline && matches!(inode.kind, Kind::File(_)));
        let vnid = alloc.alloc(slots, block0_ok);
        by_id[id] = Some(placed.len());
        placed.push(Placed {
            id,
            path: path.to_vec(),
            nid: vnid,
            ino: (ino + 1) as u32,
            extended,
            inline,
            size,
            nlink,
            meta_len,
            ibody,
            vnid,
            zblocks,
            tail_len,
            blkaddr,
            nblocks,
        });
    }

    let meta_blocks = alloc.blocks();
    let data_blocks = shapes.as_ref().map_or(0, |s| s.data_blocks);
    // Metadata block 0 stays block 0; the others follow the file data written first.
    for p in &mut placed {
        let vblock = p.vnid / SLOTS_PER_BLOCK as u64;
        if vblock > 0 {
            p.nid = p.vnid + data_blocks * SLOTS_PER_BLOCK as u64;
        }
    }
    let mut next_block = data_blocks + meta_blocks;
    for p in &mut placed {
        if p.nblocks > 0 && p.blkaddr == NULL_ADDR {
            p.blkaddr = u32::try_from(next_block)
                .map_err(|_| ErofsError::TooManyBlocks { blocks: next_block })?;
            next_block += p.nblocks;
        }
    }
    if next_block > u32::MAX as u64 {
        return Err(ErofsError::TooManyBlocks { blocks: next_block });
    }
    let root_nid = u16::try_from(placed.first().map_or(0, |p| p.nid)).map_err(|_| {
        ErofsError::PlanMismatch {
            detail: "root nid does not fit 16 bits".into(),
        }
    })?;

    // Metadata is rendered in nid order.
    let mut idx: Vec<usize> = (0..placed.len()).collect();
    idx.sort_by_key(|&i| placed[i].nid);
    let mut sorted = Vec::with_capacity(placed.len());
    let mut new_pos = vec![0usize; placed.len()];
    for (new, &old) in idx.iter().enumerate() {
        new_pos[old] = new;
    }
    for &old in &idx {
        sorted.push(placed[old].clone());
    }
    for slot in by_id.iter_mut().flatten() {
        *slot = new_pos[*slot];
    }

    let zfiles = shapes
        .map(|s| {
            s.compressed
                .into_iter()
                .map(|(id, (_, z))| (id, z))
                .collect()
        })
        .unwrap_or_default();
    Ok(Plan {
        placed: sorted,
        by_id,
        root_nid,
        meta_blocks,
        data_blocks,
        total_blocks: next_block,
        opts: opts.clone(),
        compression,
        zfiles,
    })
}

fn superblock(plan: &Plan) -> [u8; SUPER_SIZE] {
    let mut sb = [0u8; SUPER_SIZE];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[8..12].copy_from_slice(&(FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME).to_le_bytes());
    if plan.compression != Compression::None {
        // As mkfs.erofs 1.5 with -zlz4/-zlz4hc: 0-padding, and the LZ4 window in u1.
        sb[80..84].copy_from_slice(&FEATURE_INCOMPAT_LZ4_0PADDING.to_le_bytes());
        sb[84..86].copy_from_slice(&lz4::MAX_DISTANCE.to_le_bytes());
    }
    sb[12] = BLKSZBITS;
    sb[14..16].copy_from_slice(&plan.root_nid.to_le_bytes());
    sb[16..24].copy_from_slice(&(plan.placed.len() as u64).to_le_bytes());
    sb[24..32].copy_from_slice(&plan.opts.build_time.to_le_bytes());
    sb[36..40].copy_from_slice(&(plan.total_blocks as u32).to_le_bytes());
    // meta_blkaddr (40..44) and xattr_blkaddr (44..48) stay 0.
    sb[48..64].copy_from_slice(&plan.opts.uuid);
    let name = plan.opts.volume_name.as_bytes();
    sb[64..64 + name.len()].copy_from_slice(name);
    sb
}

/// Inode core + xattr body.
fn inode_bytes(tree: &Tree, plan: &Plan, p: &Placed) -> Result<Vec<u8>, ErofsError> {
    let build_time = plan.opts.build_time;
    let inode = tree.inode(p.id);
    let layout = if p.zblocks.is_some() {
        LAYOUT_COMPRESSION
    } else if p.inline {
        LAYOUT_FLAT_INLINE
    } else {
        LAYOUT_FLAT_PLAIN
    };
    let format = (layout << 1) | u16::from(p.extended);
    let xattrs = xattr_body(&p.path, inode)?;
    let i_u = match inode.kind {
        Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
            encode_dev(&p.path, major, minor)?
        }
        // A compressed file's i_u counts its blocks; the indexes say where they are.
        _ => p.zblocks.unwrap_or(p.blkaddr),
    };
    let mode = inode.st_mode() as u16;
    let mut b = Vec::with_capacity(p.meta_len);
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&xattr_icount(xattrs.len()).to_le_bytes());
    b.extend_from_slice(&mode.to_le_bytes());
    if p.extended {
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&p.size.to_le_bytes());
        b.extend_from_slice(&i_u.to_le_bytes());
        b.extend_from_slice(&p.ino.to_le_bytes());
        b.extend_from_slice(&inode.uid.to_le_bytes());
        b.extend_from_slice(&inode.gid.to_le_bytes());
        b.extend_from_slice(&inode.mtime.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&p.nlink.to_le_bytes());
        b.extend_from_slice(&[0u8; 16]);
    } else {
        debug_assert_eq!(inode.mtime, build_time);
        b.extend_from_slice(&(p.nlink as u16).to_le_bytes());
        b.extend_from_slice(&(p.size as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&i_u.to_le_bytes());
        b.extend_from_slice(&p.ino.to_le_bytes());
        b.extend_from_slice(&(inode.uid as u16).to_le_bytes());
        b.extend_from_slice(&(inode.gid as u16).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    b.extend_from_slice(&xattrs);
    if p.zblocks.is_some() {
        let z = plan
            .zfiles
            .get(&p.id)
            .ok_or_else(|| ErofsError::PlanMismatch {
                detail: format!("{} has no compression indexes", show(&p.path)),
            })?;
        if b.len() != p.ibody {
            return Err(ErofsError::PlanMismatch {
                detail: format!("inode {} changed its metadata size", show(&p.path)),
            });
        }
        b.resize(p.ibody.next_multiple_of(8), 0);
        b.extend_from_slice(&erofs_z::extent_bytes(z, p.size, p.blkaddr, p.ibody));
    }
    if b.len() != p.meta_len {
        return Err(ErofsError::PlanMismatch {
            detail: format!("inode {} changed its metadata size", show(&p.path)),
        });
    }
    Ok(b)
}

/// The full content of a directory (all blocks, the last one only up to the directory size).
fn dir_bytes(
    tree: &Tree,
    plan: &Plan,
    p: &Placed,
    kids: &[(&[u8], InodeId)],
) -> Result<Vec<u8>, ErofsError> {
    let entries = dir_entries(tree, &p.path, kids)?;
    let (starts, size) = pack_dir(entries.iter().map(|e| e.0));
    if size != p.size {
        return Err(ErofsError::PlanMismatch {
            detail: format!("directory {} changed", show(&p.path)),
        });
    }
    let mut out = vec![0u8; size as usize];
    for (bi, &start) in starts.iter().enumerate() {
        let end = starts.get(bi + 1).copied().unwrap_or(entries.len());
        let block = &mut out[bi * BLKSZ..];
        let mut nameoff = (end - start) * DIRENT_SIZE;
        for (k, &(name, id)) in entries[start..end].iter().enumerate() {
            let child = plan.by_id(id)?;
            let d = &mut block[k * DIRENT_SIZE..(k + 1) * DIRENT_SIZE];
            d[0..8].copy_from_slice(&child.nid.to_le_bytes());
            d[8..10].copy_from_slice(&(nameoff as u16).to_le_bytes());
            d[10] = file_type(&tree.inode(id).kind);
            block[nameoff..nameoff + name.len()].copy_from_slice(name);
            nameoff += name.len();
        }
    }
    Ok(out)
}

/// Positioned writes into the image region, with errors that say where.
struct Region<'a> {
    out: &'a File,
    offset: u64,
    /// The region lies past the end of a regular file, so it already reads as zeros and
    /// all-zero data blocks can be left as holes (a sparse image, and a cheap > 4 GiB file).
    fresh: bool,
}

impl Region<'_> {
    /// Writes whole data blocks, skipping all-zero ones when the region is fresh.
    fn put_data(&self, at: u64, data: &[u8]) -> Result<(), ErofsError> {
        if !self.fresh {
            return self.put(at, data);
        }
        let mut run_start: Option<usize> = None;
        for (i, chunk) in data.chunks(BLKSZ).enumerate() {
            let zero = chunk == &ZERO_BLOCK[..chunk.len()];
            match (zero, run_start) {
                (false, None) => run_start = Some(i * BLKSZ),
                (true, Some(s)) => {
                    self.put(at + s as u64, &data[s..i * BLKSZ])?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            self.put(at + s as u64, &data[s..])?;
        }
        Ok(())
    }

    fn put(&self, at: u64, data: &[u8]) -> Result<(), ErofsError> {
        self.out
            .write_all_at(data, self.offset + at)
            .map_err(|source| ErofsError::Io {
                what: format!(
                    "writing {} bytes of the EROFS image at offset {}",
                    data.len(),
                    self.offset + at
                ),
                source,
            })
    }
}

/// Writes the filesystem planned by `plan` at `offset` of `out`; fails with
/// [`ErofsError::TooLarge`] if it needs more than `max_len` bytes (uncompressed: before
/// writing anything; compressed: once every file is compressed, naming the size needed).
pub fn write(
    tree: &Tree,
    plan: &Plan,
    out: &File,
    offset: u64,
    max_len: u64,
) -> Result<Written, ErofsError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    write_with_threads(tree, plan, out, offset, max_len, threads)
}

/// [`write`] with `threads` compression threads (the bytes do not depend on it).
pub fn write_with_threads(
    tree: &Tree,
    plan: &Plan,
    out: &File,
    offset: u64,
    max_len: u64,
    threads: usize,
) -> Result<Written, ErofsError> {
    let unique = tree.unique_inodes();
    if unique.len() != plan.placed.len() {
        return Err(ErofsError::PlanMismatch {
            detail: format!(
                "{} inodes planned, {} in the tree",
                plan.placed.len(),
                unique.len()
            ),
        });
    }
    if let Some(level) = plan.compression.level() {
        return write_compressed(tree, plan, level, out, offset, max_len, threads.max(1));
    }
    if plan.size() > max_len {
        return Err(ErofsError::TooLarge {
            needed: plan.size(),
            available: max_len,
        });
    }
    let fresh = match out.metadata() {
        Ok(m) => m.is_file() && m.len() <= offset,
        Err(_) => false,
    };
    let region = Region { out, offset, fresh };
    write_metadata(tree, plan, &region, &HashMap::new())?;

    // File contents: every archive streamed once.
    let wanted = file_contents(tree, plan)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut failure: Option<ErofsError> = None;
    let res = Tree::read_blobs(&wanted, &mut |i, reader| {
        let p = &plan.placed[i];
        keep_error(&mut failure, copy_file(&region, p, reader, &mut buf))
    });
    finish_read(failure, res)?;
    if fresh {
        extend_to(out, offset + plan.size())?;
    }
    Ok(written(plan))
}

fn written(plan: &Plan) -> Written {
    Written {
        size: plan.size(),
        blocks: plan.total_blocks,
        inodes: plan.placed.len() as u64,
    }
}

/// Regular files with content, in the order their data is laid out.
fn file_contents<'t>(tree: &'t Tree, plan: &Plan) -> Result<Vec<(usize, &'t Blob)>, ErofsError> {
    let mut wanted: Vec<(usize, &Blob)> = Vec::new();
    for (i, p) in plan.placed.iter().enumerate() {
        if let Kind::File(blob) = &tree.inode(p.id).kind {
            if blob.len() != p.size {
                return Err(ErofsError::PlanMismatch {
                    detail: format!("{} changed size", show(&p.path)),
                });
            }
            if p.size > 0 {
                wanted.push((i, blob));
            }
        }
    }
    // Reading order follows the data layout, which helps host files and generated blobs.
    wanted.sort_by_key(|&(i, _)| (plan.placed[i].blkaddr, plan.placed[i].nid));
    Ok(wanted)
}

/// Stores the first error of a `read_blobs` callback (the io::Error handed back loses its type).
fn keep_error(failure: &mut Option<ErofsError>, r: Result<(), ErofsError>) -> io::Result<()> {
    r.map_err(|e| {
        let msg = e.to_string();
        *failure = Some(e);
        io::Error::other(msg)
    })
}

fn finish_read(failure: Option<ErofsError>, res: io::Result<()>) -> Result<(), ErofsError> {
    if let Some(e) = failure {
        return Err(e);
    }
    res.map_err(|source| ErofsError::Io {
        what: "reading file contents for the EROFS image".into(),
        source,
    })
}

/// Trailing holes: make the file cover the whole region.
fn extend_to(out: &File, end: u64) -> Result<(), ErofsError> {
    let len = out.metadata().map_err(|source| ErofsError::Io {
        what: "reading the output file's length".into(),
        source,
    })?;
    if len.len() < end {
        out.set_len(end).map_err(|source| ErofsError::Io {
            what: format!("extending the output file to {end} bytes"),
            source,
        })?;
    }
    Ok(())
}

/// Metadata, one block at a time in nid order; directory and symlink data go out as well.
/// Inline file tails come from `tails` when present (compressed builds), else are left for
/// the content pass.
fn write_metadata(
    tree: &Tree,
    plan: &Plan,
    region: &Region<'_>,
    tails: &HashMap<InodeId, Vec<u8>>,
) -> Result<(), ErofsError> {
    let children = tree.children();
    let mut block = vec![0u8; BLKSZ];
    let mut cur_block = 0u64;
    let flush = |blk: &mut Vec<u8>, n: u64| -> Result<(), ErofsError> {
        if n == 0 {
            let mut sb = superblock(plan);
            blk[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE].copy_from_slice(&sb);
            let crc = rke2_image_contract::crc::crc32c_raw(!0, &blk[SUPER_OFFSET..]);
            sb[4..8].copy_from_slice(&crc.to_le_bytes());
            blk[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE].copy_from_slice(&sb);
        }
        region.put(plan.meta_block(n) * BLOCK_SIZE, blk)?;
        blk.fill(0);
        Ok(())
    };
    for p in &plan.placed {
        let mut bytes = inode_bytes(tree, plan, p)?;
        let inode = tree.inode(p.id);
        let data: Option<Vec<u8>> = match &inode.kind {
            Kind::Dir => {
                let kids = children
                    .get(p.path.as_slice())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                Some(dir_bytes(tree, plan, p, kids)?)
            }
            Kind::Symlink(target) => Some(target.clone()),
            _ => None,
        };
        if let Some(data) = data {
            let whole = (p.nblocks * BLOCK_SIZE).min(data.len() as u64) as usize;
            if p.nblocks > 0 {
                let mut padded = data[..whole].to_vec();
                padded.resize((p.nblocks * BLOCK_SIZE) as usize, 0);
                region.put(p.blkaddr as u64 * BLOCK_SIZE, &padded)?;
            }
            if p.inline {
                bytes.extend_from_slice(&data[whole..]);
            }
        } else if let Some(tail) = tails.get(&p.id) {
            bytes.extend_from_slice(tail);
        } else {
            // File tails are written when the contents stream by.
            bytes.resize(p.meta_len + p.tail_len, 0);
        }
        if bytes.len() != p.meta_len + p.tail_len {
            return Err(ErofsError::PlanMismatch {
                detail: format!("{} changed its inline data", show(&p.path)),
            });
        }
        let start = p.vnid * SLOT as u64;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = start + pos as u64;
            let blk = at / BLOCK_SIZE;
            while cur_block < blk {
                flush(&mut block, cur_block)?;
                cur_block += 1;
            }
            let off = (at % BLOCK_SIZE) as usize;
            let n = (BLKSZ - off).min(bytes.len() - pos);
            block[off..off + n].copy_from_slice(&bytes[pos..pos + n]);
            pos += n;
        }
    }
    while cur_block < plan.meta_blocks {
        flush(&mut block, cur_block)?;
        cur_block += 1;
    }
    Ok(())
}

/// What the data pass made of one file.
enum Stored {
    Compressed { z: Compressed, blocks: Vec<u8> },
    Flat(Vec<u8>),
}

/// Writes file data blocks from block 1 on, in placement order; past `max_blocks` it only
/// counts (so a too-small partition can be told the size it needs).
struct DataArea<'r, 'f> {
    region: &'r Region<'f>,
    next: u64,
    max_blocks: u64,
    /// Highest block written + 1 (a flat fallback can leave compressed blocks past its end).
    high: u64,
    shapes: Shapes,
    tails: HashMap<InodeId, Vec<u8>>,
}

impl DataArea<'_, '_> {
    fn put(&mut self, data: &[u8]) -> Result<(), ErofsError> {
        let n = data.len().div_ceil(BLKSZ) as u64;
        if self.next + n <= self.max_blocks {
            self.region.put(self.next * BLOCK_SIZE, data)?;
            self.high = self.high.max(self.next + n);
        }
        self.next += n;
        Ok(())
    }

    fn start(&self) -> Result<u32, ErofsError> {
        u32::try_from(self.next).map_err(|_| ErofsError::TooManyBlocks { blocks: self.next })
    }

    /// Places a file as the uncompressed plan `p` shapes it: whole blocks here, the inline
    /// tail kept for the metadata.
    fn place_flat(&mut self, p: &Placed, data: &[u8]) -> Result<(), ErofsError> {
        let whole = (p.size - p.tail_len as u64) as usize;
        if p.nblocks > 0 {
            self.shapes.flat.insert(p.id, self.start()?);
            let mut body = data[..whole].to_vec();
            body.resize((p.nblocks * BLOCK_SIZE) as usize, 0);
            self.put(&body)?;
        }
        if p.tail_len > 0 {
            self.tails.insert(p.id, data[whole..].to_vec());
        }
        Ok(())
    }

    fn place(&mut self, p: &Placed, stored: Stored) -> Result<(), ErofsError> {
        match stored {
            Stored::Compressed { z, blocks } => {
                let start = self.start()?;
                self.put(&blocks)?;
                self.shapes.compressed.insert(p.id, (start, z));
                Ok(())
            }
            Stored::Flat(data) => self.place_flat(p, &data),
        }
    }
}

/// Sends compressed blocks of a large file straight to the data area.
struct AreaSink<'a, 'r, 'f> {
    area: &'a mut DataArea<'r, 'f>,
    failure: Option<ErofsError>,
}

impl BlockSink for AreaSink<'_, '_, '_> {
    fn block(&mut self, data: &[u8; BLKSZ]) -> io::Result<()> {
        self.area.put(data).map_err(|e| {
            let msg = e.to_string();
            self.failure = Some(e);
            io::Error::other(msg)
        })
    }
}

fn compress_bytes(c: &mut Compressor, data: Vec<u8>) -> io::Result<Stored> {
    let mut blocks = Vec::new();
    Ok(
        match erofs_z::compress(c, &mut &data[..], data.len() as u64, &mut blocks)? {
            Some(z) => Stored::Compressed { z, blocks },
            None => Stored::Flat(data),
        },
    )
}

fn read_exactly(p: &Placed, reader: &mut dyn Read) -> Result<Vec<u8>, ErofsError> {
    let mut data = vec![0u8; p.size as usize];
    let got = read_full(reader, &mut data).map_err(|source| ErofsError::Io {
        what: format!("reading {}", show(&p.path)),
        source,
    })?;
    if got < data.len() {
        return Err(ErofsError::ShortRead {
            path: show(&p.path),
            expected: p.size,
            got: got as u64,
        });
    }
    Ok(data)
}

/// A file too large to hold in memory: spooled to a temporary file, compressed from there
/// straight into the image, written flat from there if compression does not pay.
fn place_large(
    area: &mut DataArea<'_, '_>,
    c: &mut Compressor,
    p: &Placed,
    reader: &mut dyn Read,
) -> Result<(), ErofsError> {
    let io_err = |what: &str| {
        let what = format!("{what} {}", show(&p.path));
        move |source| ErofsError::Io { what, source }
    };
    let mut spool = tempfile::tempfile().map_err(io_err("spooling"))?;
    let got = io::copy(&mut reader.take(p.size), &mut spool).map_err(io_err("spooling"))?;
    if got < p.size {
        return Err(ErofsError::ShortRead {
            path: show(&p.path),
            expected: p.size,
            got,
        });
    }
    spool.rewind().map_err(io_err("rereading"))?;
    let start = area.start()?;
    let mut sink = AreaSink {
        area,
        failure: None,
    };
    let mut input = io::BufReader::with_capacity(COPY_CHUNK, &spool);
    let res = erofs_z::compress(c, &mut input, p.size, &mut sink);
    if let Some(e) = sink.failure {
        return Err(e);
    }
    match res.map_err(io_err("compressing"))? {
        Some(z) => {
            area.shapes.compressed.insert(p.id, (start, z));
        }
        None => {
            area.next = u64::from(start);
            spool.rewind().map_err(io_err("rereading"))?;
            let mut input = io::BufReader::with_capacity(COPY_CHUNK, &spool);
            let whole = p.size - p.tail_len as u64;
            if p.nblocks > 0 {
                area.shapes.flat.insert(p.id, start);
            }
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut done = 0u64;
            while done < whole {
                let want = (whole - done).min(COPY_CHUNK as u64) as usize;
                let n = read_full(&mut input, &mut buf[..want]).map_err(io_err("rereading"))?;
                if n < want {
                    return Err(ErofsError::ShortRead {
                        path: show(&p.path),
                        expected: p.size,
                        got: done + n as u64,
                    });
                }
                let padded = if n % BLKSZ != 0 {
                    buf[n..n.next_multiple_of(BLKSZ)].fill(0);
                    n.next_multiple_of(BLKSZ)
                } else {
                    n
                };
                area.put(&buf[..padded])?;
                done += n as u64;
            }
            if p.tail_len > 0 {
                let mut tail = vec![0u8; p.tail_len];
                input.read_exact(&mut tail).map_err(io_err("rereading"))?;
                area.tails.insert(p.id, tail);
            }
        }
    }
    Ok(())
}

fn write_compressed(
    tree: &Tree,
    flat_plan: &Plan,
    level: lz4::Level,
    out: &File,
    offset: u64,
    max_len: u64,
    threads: usize,
) -> Result<Written, ErofsError> {
    // No hole punching here: a flat fallback rewrites blocks that already hold data.
    let region = Region {
        out,
        offset,
        fresh: false,
    };
    let wanted = file_contents(tree, flat_plan)?;
    let mut area = DataArea {
        region: &region,
        next: 1,
        max_blocks: max_len / BLOCK_SIZE,
        high: 0,
        shapes: Shapes::default(),
        tails: HashMap::new(),
    };
    let mut failure: Option<ErofsError> = None;
    let res = std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::sync_channel::<(usize, usize, Vec<u8>)>(threads);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (res_tx, res_rx) = mpsc::channel::<(usize, usize, io::Result<Stored>)>();
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let res_tx = res_tx.clone();
            scope.spawn(move || {
                let mut c = Compressor::new(level);
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((seq, i, data)) = job else { break };
                    if res_tx.send((seq, i, compress_bytes(&mut c, data))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        // Results are placed strictly in sequence order, whichever thread finishes first.
        let mut sent = 0usize;
        let mut placed = 0usize;
        let mut in_flight = 0u64;
        let mut sizes: BTreeMap<usize, u64> = BTreeMap::new();
        let mut ready: BTreeMap<usize, (usize, Stored)> = BTreeMap::new();
        let mut c = Compressor::new(level);
        let mut wait_one = |area: &mut DataArea<'_, '_>,
                            placed: &mut usize,
                            in_flight: &mut u64,
                            sizes: &mut BTreeMap<usize, u64>|
         -> Result<(), ErofsError> {
            let (seq, i, r) = res_rx.recv().map_err(|_| ErofsError::Io {
                what: "compressing file contents".into(),
                source: io::Error::other("a compression thread stopped"),
            })?;
            let stored = r.map_err(|source| ErofsError::Io {
                what: format!("compressing {}", show(&flat_plan.placed[i].path)),
                source,
            })?;
            ready.insert(seq, (i, stored));
            while let Some((i, stored)) = ready.remove(placed) {
                area.place(&flat_plan.placed[i], stored)?;
                *in_flight -= sizes.remove(placed).unwrap_or(0);
                *placed += 1;
            }
            Ok(())
        };
        let res = Tree::read_blobs(&wanted, &mut |i, reader| {
            let p = &flat_plan.placed[i];
            let r = (|| -> Result<(), ErofsError> {
                if p.size > PARALLEL_MAX {
                    while placed < sent {
                        wait_one(&mut area, &mut placed, &mut in_flight, &mut sizes)?;
                    }
                    return place_large(&mut area, &mut c, p, reader);
                }
                let data = read_exactly(p, reader)?;
                while placed < sent && in_flight + p.size > IN_FLIGHT_MAX {
                    wait_one(&mut area, &mut placed, &mut in_flight, &mut sizes)?;
                }
                if p.size <= BLOCK_SIZE && placed == sent {
                    // mkfs.erofs keeps files of one block or less flat.
                    return area.place_flat(p, &data);
                }
                sizes.insert(sent, p.size);
                in_flight += p.size;
                job_tx.send((sent, i, data)).map_err(|_| ErofsError::Io {
                    what: "compressing file contents".into(),
                    source: io::Error::other("the compression threads stopped"),
                })?;
                sent += 1;
                Ok(())
            })();
            keep_error(&mut failure, r)
        });
        drop(job_tx);
        let mut drained = Ok(());
        while drained.is_ok() && placed < sent {
            drained = wait_one(&mut area, &mut placed, &mut in_flight, &mut sizes);
        }
        if let Err(e) = drained {
            failure.get_or_insert(e);
        }
        res
    });
    finish_read(failure, res)?;

    let high = area.high;
    let mut shapes = area.shapes;
    shapes.data_blocks = area.next - 1;
    let tails = area.tails;
    let plan = plan_with(tree, &flat_plan.opts, flat_plan.compression, Some(shapes))?;
    if plan.size() > max_len {
        return Err(ErofsError::TooLarge {
            needed: plan.size(),
            available: max_len,
        });
    }
    write_metadata(tree, &plan, &region, &tails)?;
    // Blocks a flat fallback left behind past the end of the image.
    let mut end = plan.total_blocks;
    while end < high {
        region.put(end * BLOCK_SIZE, &ZERO_BLOCK)?;
        end += 1;
    }
    Ok(written(&plan))
}

/// Reads exactly `want` bytes (fewer only at end of input).
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn copy_file(
    region: &Region<'_>,
    p: &Placed,
    reader: &mut dyn Read,
    buf: &mut [u8],
) -> Result<(), ErofsError> {
    let io_err = |source| ErofsError::Io {
        what: format!("reading {}", show(&p.path)),
        source,
    };
    let short = |got| ErofsError::ShortRead {
        path: show(&p.path),
        expected: p.size,
        got,
    };
    let body = p.size - p.tail_len as u64;
    let mut done = 0u64;
    while done < body {
        let want = (body - done).min(buf.len() as u64) as usize;
        let got = read_full(reader, &mut buf[..want]).map_err(io_err)?;
        if got < want {
            return Err(short(done + got as u64));
        }
        region.put_data(p.blkaddr as u64 * BLOCK_SIZE + done, &buf[..want])?;
        done += want as u64;
    }
    if !p.inline && !region.fresh && done & (BLOCK_SIZE - 1) != 0 {
        // Zero the rest of the last block: the region may hold old bytes.
        let pad = (BLOCK_SIZE - done % BLOCK_SIZE) as usize;
        buf[..pad].fill(0);
        region.put(p.blkaddr as u64 * BLOCK_SIZE + done, &buf[..pad])?;
    }
    if p.tail_len > 0 {
        let got = read_full(reader, &mut buf[..p.tail_len]).map_err(io_err)?;
        if got < p.tail_len {
            return Err(short(done + got as u64));
        }
        region.put(p.nid * SLOT as u64 + p.meta_len as u64, &buf[..p.tail_len])?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_like_linux() {
        assert_eq!(encode_dev(b"x", 8, 1).unwrap(), 0x801);
        assert_eq!(encode_dev(b"x", 259, 0x12345).unwrap(), 0x1231_0345);
        assert!(encode_dev(b"x", 4096, 0).is_err());
    }

    #[test]
    fn dir_packing_starts_new_block_when_full() {
        let long = [b'a'; 255];
        let names: Vec<&[u8]> = (0..20).map(|_| &long[..]).collect();
        let (starts, size) = pack_dir(names.iter().copied());
        // 267 bytes per entry: 15 fit a block.
        assert_eq!(starts, vec![0, 15]);
        assert_eq!(size, 4096 + 5 * 267);
    }

    #[test]
    fn xattr_prefixes() {
        assert_eq!(
            xattr_prefix(b"security.selinux"),
            Some((6, &b"selinux"[..]))
        );
        assert_eq!(
            xattr_prefix(b"system.posix_acl_access"),
            Some((2, &b""[..]))
        );
        assert_eq!(xattr_prefix(b"user."), None);
        assert_eq!(xattr_prefix(b"system.other"), None);
    }
}
