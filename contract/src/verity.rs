//! dm-verity hash device, format 1, byte for byte as `veritysetup format` writes it.
//!
//! Layout of the hash device (from `hash_offset`): block 0 is the superblock (512 meaningful
//! bytes, the rest of the block zero), then the hash tree, top level first. A hash block holds
//! `hash_block_size / 32` sha256 digests, zero-padded. Each digest is `sha256(salt || block)`;
//! the root hash is that of the single top-level block (or of the only data block when there is
//! just one, in which case there is no tree at all).
//!
//! The builder writes it with [`format`]; `rke2-init` reads the superblock back with
//! [`Superblock::parse`] and builds the kernel table with [`table`].

use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// Size of the superblock block for the 4 KiB hash blocks the images use.
pub const SUPERBLOCK_SIZE: u64 = 4096;
/// The bytes of the on-disk superblock structure that carry meaning.
const SB_STRUCT_SIZE: usize = 512;
pub const SIGNATURE: &[u8; 8] = b"verity\0\0";
pub const MAX_SALT_SIZE: usize = 256;
const DIGEST_SIZE: usize = 32;
/// The only algorithm this implementation hashes with.
pub const ALGORITHM: &str = "sha256";
/// Block number (in hash blocks) where the tree starts: right after the superblock.
pub const HASH_START_BLOCK: u64 = 1;

/// How much data is hashed per read, so memory stays bounded whatever the device size.
const IO_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("dm-verity parameters: {0}")]
    BadParams(String),
    #[error("dm-verity superblock: {0}")]
    BadSuperblock(String),
    #[error("dm-verity: reading {what} at byte offset {offset}: {source}")]
    Read {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("dm-verity: writing the hash device at byte offset {offset}: {source}")]
    Write { offset: u64, source: io::Error },
}

/// Everything the superblock records; enough to rebuild the kernel table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
    /// Hash algorithm name as the kernel knows it; only `"sha256"` is supported.
    pub algorithm: String,
}

fn valid_block_size(n: u32) -> bool {
    // The kernel accepts powers of two from 512 up to the page size (4096 on x86-64).
    n.is_power_of_two() && (512..=4096).contains(&n)
}

impl Params {
    /// The parameters the images use: 4 KiB data and hash blocks, sha256.
    pub fn new(data_blocks: u64, salt: Vec<u8>, uuid: [u8; 16]) -> Params {
        Params {
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks,
            salt,
            uuid,
            algorithm: ALGORITHM.to_string(),
        }
    }

    /// Checks the parameters can be written and hashed by this implementation.
    pub fn validate(&self) -> Result<(), VerityError> {
        if !valid_block_size(self.data_block_size) {
            return Err(VerityError::BadParams(format!(
                "data block size {} is not a power of two between 512 and 4096",
                self.data_block_size
            )));
        }
        if !valid_block_size(self.hash_block_size) {
            return Err(VerityError::BadParams(format!(
                "hash block size {} is not a power of two between 512 and 4096",
                self.hash_block_size
            )));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::BadParams(
                "data_blocks is 0; the data device must hold at least one block".into(),
            ));
        }
        if self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .is_none()
        {
            return Err(VerityError::BadParams(format!(
                "{} data blocks of {} bytes overflow a 64-bit size",
                self.data_blocks, self.data_block_size
            )));
        }
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::BadParams(format!(
                "salt is {} bytes; at most {MAX_SALT_SIZE} fit in the superblock",
                self.salt.len()
            )));
        }
        if self.algorithm != ALGORITHM {
            return Err(VerityError::BadParams(format!(
                "hash algorithm {:?} is not supported; use {ALGORITHM:?}",
                self.algorithm
            )));
        }
        Ok(())
    }

    /// Size of the protected data in bytes.
    pub fn data_size(&self) -> u64 {
        self.data_blocks
            .saturating_mul(u64::from(self.data_block_size))
    }

    /// The superblock block. Only valid parameters (see [`Params::validate`]) give a superblock
    /// `veritysetup` accepts; a salt longer than 256 bytes is cut, which [`format`] refuses.
    pub fn superblock_bytes(&self) -> [u8; SUPERBLOCK_SIZE as usize] {
        let mut b = [0u8; SUPERBLOCK_SIZE as usize];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type 1: sha(salt || data)
        b[16..32].copy_from_slice(&self.uuid);
        let alg = self.algorithm.as_bytes();
        let n = alg.len().min(31); // keep a terminating NUL
        b[32..32 + n].copy_from_slice(&alg[..n]);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_SIZE)];
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }
}

/// Reader of the on-disk superblock.
#[derive(Debug)]
pub struct Superblock;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Superblock {
    /// Parses the superblock at the start of `bytes` (at least 512 bytes of the hash device).
    pub fn parse(bytes: &[u8]) -> Result<Params, VerityError> {
        let bad = |m: String| Err(VerityError::BadSuperblock(m));
        if bytes.len() < SB_STRUCT_SIZE {
            return bad(format!(
                "only {} bytes given, the superblock is {SB_STRUCT_SIZE}",
                bytes.len()
            ));
        }
        if &bytes[0..8] != SIGNATURE {
            return bad(format!(
                "signature is {:?}, expected \"verity\\0\\0\": not a dm-verity hash device \
                 (or the hash offset is wrong)",
                String::from_utf8_lossy(&bytes[0..8])
            ));
        }
        let version = le32(bytes, 8);
        if version != 1 {
            return bad(format!("version {version} is not supported (only 1)"));
        }
        let hash_type = le32(bytes, 12);
        if hash_type != 1 {
            return bad(format!(
                "hash type {hash_type} is not supported (only 1, the normal format)"
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[16..32]);
        let alg_field = &bytes[32..64];
        let alg_len = alg_field.iter().position(|&c| c == 0).unwrap_or(32);
        let algorithm = match std::str::from_utf8(&alg_field[..alg_len]) {
            Ok(s) => s.to_string(),
            Err(_) => return bad("algorithm name is not UTF-8".into()),
        };
        let mut blocks = [0u8; 8];
        blocks.copy_from_slice(&bytes[72..80]);
        let salt_size = usize::from(u16::from_le_bytes([bytes[80], bytes[81]]));
        if salt_size > MAX_SALT_SIZE {
            return bad(format!(
                "salt size {salt_size} is larger than {MAX_SALT_SIZE}"
            ));
        }
        let params = Params {
            data_block_size: le32(bytes, 64),
            hash_block_size: le32(bytes, 68),
            data_blocks: u64::from_le_bytes(blocks),
            salt: bytes[88..88 + salt_size].to_vec(),
            uuid,
            algorithm,
        };
        params
            .validate()
            .map_err(|e| VerityError::BadSuperblock(e.to_string()))?;
        Ok(params)
    }
}

/// Number of hash blocks per tree level, lowest level (hashes of the data) first.
fn level_sizes(data_blocks: u64, hash_block_size: u32) -> Vec<u64> {
    let per_block = u64::from(hash_block_size) / DIGEST_SIZE as u64;
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    // A single block needs no tree: its own hash is the root.
    while n > 1 {
        n = n.div_ceil(per_block);
        sizes.push(n);
    }
    sizes
}

/// Where each tree level lies in the hash device, lowest level first: `(byte offset from the
/// start of the hash device, number of hash blocks)`. The top level is stored first, right
/// after the superblock block.
pub fn level_offsets(data_blocks: u64, hash_block_size: u32) -> Vec<(u64, u64)> {
    let sizes = level_sizes(data_blocks, hash_block_size);
    let hbs = u64::from(hash_block_size);
    let mut out = vec![(0u64, 0u64); sizes.len()];
    let mut pos = HASH_START_BLOCK * hbs;
    for i in (0..sizes.len()).rev() {
        out[i] = (pos, sizes[i]);
        pos += sizes[i] * hbs;
    }
    out
}

/// The salted block digest the tree is made of.
pub fn block_digest(salt: &[u8], block: &[u8]) -> [u8; 32] {
    digest(salt, block)
}

/// Size in bytes of the hash device: superblock block plus all tree levels.
pub fn hash_device_size(data_blocks: u64, hash_block_size: u32) -> u64 {
    let tree: u64 = level_sizes(data_blocks, hash_block_size).iter().sum();
    (HASH_START_BLOCK + tree) * u64::from(hash_block_size)
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hashes `count` blocks of `src_block` bytes read from `src` at `src_offset` and writes the
/// hash blocks (zero-padded) to `dst` at `dst_offset`, in chunks of bounded size.
#[allow(clippy::too_many_arguments)]
fn hash_level<S: FileExt + ?Sized, D: FileExt + ?Sized>(
    src: &S,
    what: &'static str,
    src_offset: u64,
    src_block: usize,
    count: u64,
    dst: &D,
    dst_offset: u64,
    hash_block: usize,
    salt: &[u8],
) -> Result<(), VerityError> {
    let per_block = hash_block / DIGEST_SIZE;
    let blocks_per_read = (IO_CHUNK / src_block).max(1);
    let mut inbuf = vec![0u8; blocks_per_read * src_block];
    // Output flushed in whole hash blocks; at most one read's worth plus one block is held.
    let mut out: Vec<u8> = Vec::with_capacity(IO_CHUNK / 8 + hash_block);
    let mut out_pos = dst_offset;
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(blocks_per_read as u64) as usize;
        let off = src_offset + done * src_block as u64;
        let buf = &mut inbuf[..n * src_block];
        src.read_exact_at(buf, off)
            .map_err(|source| VerityError::Read {
                what,
                offset: off,
                source,
            })?;
        for block in buf.chunks_exact(src_block) {
            out.extend_from_slice(&digest(salt, block));
        }
        done += n as u64;
        let last = done == count;
        let full = if last {
            out.len().div_ceil(hash_block) * hash_block
        } else {
            out.len() / hash_block * hash_block
        };
        if full > out.len() {
            out.resize(full, 0);
        }
        if full > 0 {
            dst.write_all_at(&out[..full], out_pos)
                .map_err(|source| VerityError::Write {
                    offset: out_pos,
                    source,
                })?;
            out_pos += full as u64;
            out.drain(..full);
        }
    }
    debug_assert_eq!(
        out_pos - dst_offset,
        count.div_ceil(per_block as u64) * hash_block as u64
    );
    Ok(())
}

/// Reads data blocks from `data` at `data_offset` and writes superblock + tree into `hash` at
/// `hash_offset` (positioned I/O; data and hash may be the same file). Returns the root hash.
/// `hash` must be open for reading too: upper levels are computed from the lower ones written
/// before, which keeps memory bounded.
pub fn format<D: FileExt, H: FileExt>(
    data: &D,
    data_offset: u64,
    hash: &H,
    hash_offset: u64,
    params: &Params,
) -> Result<[u8; 32], VerityError> {
    params.validate()?;
    let hbs = params.hash_block_size as usize;
    let dbs = params.data_block_size as usize;
    let sizes = level_sizes(params.data_blocks, params.hash_block_size);

    // The superblock fills one hash block (its meaningful part is 512 bytes).
    let sb = params.superblock_bytes();
    let mut sb_block = vec![0u8; hbs];
    sb_block[..SB_STRUCT_SIZE].copy_from_slice(&sb[..SB_STRUCT_SIZE]);
    hash.write_all_at(&sb_block, hash_offset)
        .map_err(|source| VerityError::Write {
            offset: hash_offset,
            source,
        })?;

    let level_offset: Vec<u64> = level_offsets(params.data_blocks, params.hash_block_size)
        .iter()
        .map(|(o, _)| hash_offset + o)
        .collect();

    let salt = &params.salt;
    if sizes.is_empty() {
        let mut block = vec![0u8; dbs];
        data.read_exact_at(&mut block, data_offset)
            .map_err(|source| VerityError::Read {
                what: "the data device",
                offset: data_offset,
                source,
            })?;
        return Ok(digest(salt, &block));
    }
    hash_level(
        data,
        "the data device",
        data_offset,
        dbs,
        params.data_blocks,
        hash,
        level_offset[0],
        hbs,
        salt,
    )?;
    for i in 1..sizes.len() {
        hash_level(
            hash,
            "the hash device",
            level_offset[i - 1],
            hbs,
            sizes[i - 1],
            hash,
            level_offset[i],
            hbs,
            salt,
        )?;
    }
    let top = sizes.len() - 1;
    let mut block = vec![0u8; hbs];
    hash.read_exact_at(&mut block, level_offset[top])
        .map_err(|source| VerityError::Read {
            what: "the hash device",
            offset: level_offset[top],
            source,
        })?;
    Ok(digest(salt, &block))
}

/// The dm table line for rke2-init:
/// `0 <sectors> verity 1 <data dev> <hash dev> <data bs> <hash bs> <blocks> 1 sha256 <root> <salt>`
/// (an empty salt is written as `-`).
pub fn table(params: &Params, data_dev: &str, hash_dev: &str, root_hash: &[u8; 32]) -> String {
    let salt = if params.salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(&params.salt)
    };
    format!(
        "0 {} verity 1 {} {} {} {} {} {} {} {} {}",
        params.data_size() / 512,
        data_dev,
        hash_dev,
        params.data_block_size,
        params.hash_block_size,
        params.data_blocks,
        HASH_START_BLOCK,
        params.algorithm,
        hex::encode(root_hash),
        salt
    )
}

/// The superblock UUID in the canonical text form `veritysetup dump` prints (bytes in order,
/// unlike GPT GUIDs which are mixed-endian on disk).
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(blocks: u64) -> Params {
        Params::new(blocks, (0u8..32).collect(), *b"0123456789abcdef")
    }

    #[test]
    fn superblock_round_trip() {
        let p = params(12345);
        let sb = p.superblock_bytes();
        assert_eq!(&sb[0..8], b"verity\0\0");
        assert!(sb[SB_STRUCT_SIZE..].iter().all(|&b| b == 0));
        assert_eq!(Superblock::parse(&sb).unwrap(), p);
    }

    #[test]
    fn superblock_rejects_garbage() {
        let sb = params(10).superblock_bytes();
        assert!(Superblock::parse(&sb[..100]).is_err());
        assert!(Superblock::parse(&[0u8; 4096]).is_err());
        let mut bad = sb;
        bad[8] = 2; // version
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = sb;
        bad[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = sb;
        bad[64..68].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = sb;
        bad[72..80].copy_from_slice(&0u64.to_le_bytes());
        assert!(Superblock::parse(&bad).is_err());
        let mut bad = sb;
        bad[32..38].copy_from_slice(b"md5\0\0\0");
        let e = Superblock::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("md5"), "{e}");
    }

    #[test]
    fn level_geometry() {
        assert_eq!(level_sizes(1, 4096), Vec::<u64>::new());
        assert_eq!(level_sizes(128, 4096), vec![1]);
        assert_eq!(level_sizes(129, 4096), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128 + 1, 4096), vec![129, 2, 1]);
        assert_eq!(hash_device_size(1, 4096), 4096);
        assert_eq!(hash_device_size(129, 4096), 4 * 4096);
    }

    #[test]
    fn table_line() {
        let p = Params::new(256, vec![0xab, 0xcd], [0; 16]);
        let t = table(&p, "/dev/vda2", "/dev/vda3", &[0x11; 32]);
        assert_eq!(
            t,
            format!(
                "0 2048 verity 1 /dev/vda2 /dev/vda3 4096 4096 256 1 sha256 {} abcd",
                "11".repeat(32)
            )
        );
        let p = Params::new(1, vec![], [0; 16]);
        assert!(table(&p, "a", "b", &[0; 32]).ends_with(" -"));
    }

    #[test]
    fn short_data_is_an_error() {
        let dir = std::env::temp_dir().join(format!("verity-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = std::fs::File::create(dir.join("d")).unwrap();
        data.set_len(4096 * 3).unwrap();
        let hash = std::fs::File::create(dir.join("h")).unwrap();
        let e = format(&data, 0, &hash, 0, &params(4)).unwrap_err();
        assert!(matches!(e, VerityError::Read { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
