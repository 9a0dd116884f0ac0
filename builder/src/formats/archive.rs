//! Base root filesystem archives (tar, tar.gz, tar.zst) read as streams, never extracted.
//!
//! [`load`] reads an archive once and records every entry into a [`Tree`] with its metadata
//! (type, mode, owner, mtime, xattrs from PAX `SCHILY.xattr.*` records, symlink targets, hard
//! links, device numbers); regular files become [`Blob::Archive`] references by entry number,
//! except small ones (up to 4 KiB), which are kept in memory from that first pass.
//! [`ArchiveSource::read_entries`] streams the archive again when a writer needs the bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::tree::{self, Blob, Inode, Kind, Tree, TreeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a tar, tar.gz or tar.zst archive (first bytes {magic})")]
    NotAnArchive { path: PathBuf, magic: String },
    #[error("{path}: entry {entry:?}: {source}")]
    Entry {
        path: PathBuf,
        entry: String,
        source: TreeError,
    },
    #[error("{path}: entry {entry:?}: unsupported tar entry type {kind}")]
    Unsupported {
        path: PathBuf,
        entry: String,
        kind: String,
    },
    #[error("{path}: entry {entry:?}: {problem}")]
    Refused {
        path: PathBuf,
        entry: String,
        problem: String,
    },
    #[error("{path}: archive changed since it was first read (entry {entry} missing)")]
    Changed { path: PathBuf, entry: u64 },
}

/// One archive file on the build host, with the compression detected from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ArchiveSource {
    pub path: PathBuf,
    pub compression: Compression,
}

/// What a read of the whole archive found, besides the tree.
#[derive(Debug, Clone)]
pub struct LoadStats {
    pub sha256: String,
    /// Size of the archive file itself.
    pub size: u64,
    pub entries: u64,
    /// Sum of regular file sizes.
    pub content_bytes: u64,
}

/// Reads the raw archive while hashing it, so the manifest's sha256 costs no extra pass.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn detect(path: &Path, reader: &mut BufReader<impl Read>) -> Result<Compression, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let head = reader.fill_buf().map_err(io_err)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Compression::Zstd);
    }
    // POSIX/GNU tar: "ustar" at offset 257. fill_buf may return less than 512 bytes for tiny
    // reads, so look at what the buffer has (BufReader's default capacity is 8 KiB).
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Compression::None);
    }
    let magic = head
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ArchiveError::NotAnArchive {
        path: path.to_path_buf(),
        magic,
    })
}

fn decompressor<'a>(
    compression: Compression,
    reader: impl BufRead + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(reader)?;
            // Archives made with `zstd --long` need a larger window than the default limit.
            d.window_log_max(31)?;
            Box::new(d)
        }
    })
}

/// Regular files up to this size are held in memory from the first pass.
const KEEP_SMALL_FILES: u64 = 4096;

/// Entries that describe the next entry or the archive rather than a file; they get no
/// entry number, in `load` and `read_entries` alike.
fn is_metadata(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    )
}

fn pax_value<'a>(exts: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    exts.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

fn parse_num(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    // PAX mtime may carry a fraction; we keep whole seconds.
    s.split('.').next()?.parse().ok()
}

/// What a tar type byte means, for messages.
fn type_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Regular | EntryType::Continuous => "regular file",
        EntryType::Link => "hard link",
        EntryType::Symlink => "symbolic link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Directory => "directory",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "GNU sparse file",
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long name",
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX header",
        _ => "unknown type",
    }
}

/// Whether `path` starts like an archive [`load`] can read (for commands that take either a
/// plain file or an archive).
pub fn looks_like_archive(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    detect(path, &mut BufReader::new(f)).is_ok()
}

/// Reads `path` once into `tree` (later entries replace earlier ones). Entry metadata is taken
/// as stored: no umask, no owner mapping.
pub fn load(path: &Path, tree: &mut Tree) -> Result<LoadStats, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let hashing = HashingReader {
        inner: file,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut buffered = BufReader::with_capacity(1 << 16, hashing);
    let compression = detect(path, &mut buffered)?;
    let source = Arc::new(ArchiveSource {
        path: path.to_path_buf(),
        compression,
    });
    let mut archive = tar::Archive::new(decompressor(compression, &mut buffered).map_err(io_err)?);
    let mut entries = 0u64;
    let mut content_bytes = 0u64;
    let mut ordinal = 0u64;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let name_bytes = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        let entry_err = |source| ArchiveError::Entry {
            path: path.to_path_buf(),
            entry: name.clone(),
            source,
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        if is_metadata(kind) {
            continue;
        }
        let refuse = |problem: String| ArchiveError::Refused {
            path: path.to_path_buf(),
            entry: name.clone(),
            problem,
        };
        // Numbered exactly as `read_entries` numbers them.
        let this = ordinal;
        ordinal += 1;
        let mut exts: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(io_err)? {
            for ext in pax {
                let ext = ext.map_err(io_err)?;
                if let Ok(k) = ext.key() {
                    exts.push((k.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        // PAX sparse files (GNU tar's --sparse with --format=posix, versions 0.0, 0.1 and 1.0)
        // keep the real name and the data map in records this reader does not apply: the file
        // would land under a made-up name with the map as its content. Refused, not guessed.
        if exts.iter().any(|(k, _)| k.starts_with("GNU.sparse.")) {
            let real = pax_value(&exts, "GNU.sparse.name")
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_else(|| name.clone());
            return Err(refuse(format!(
                "is a PAX sparse file ({real}), which is not supported; re-create the archive without --sparse (or with --format=gnu, whose sparse files are read)"
            )));
        }
        if tree::normalize(&name_bytes).is_ok_and(|n| n.is_empty()) && kind != EntryType::Directory
        {
            return Err(refuse(format!(
                "names the root of the tree but is a {} (type '{}'); the root can only be a directory",
                type_name(kind),
                kind.as_byte() as char
            )));
        }
        // Ids are 32 bits in the image; larger ones (PAX or base-256 headers) are refused,
        // not truncated (uid 2^32+1000 must not become 1000).
        let id = |key: &str, header_value: io::Result<u64>| -> Result<u32, ArchiveError> {
            let v = match pax_value(&exts, key) {
                Some(v) => parse_num(v).ok_or_else(|| {
                    refuse(format!(
                        "PAX {key} {:?} is not a number",
                        String::from_utf8_lossy(v)
                    ))
                })?,
                None => header_value.unwrap_or(0),
            };
            u32::try_from(v).map_err(|_| refuse(format!("{key} {v} does not fit in 32 bits")))
        };
        let uid = id("uid", header.uid())?;
        let gid = id("gid", header.gid())?;
        let mtime = pax_value(&exts, "mtime")
            .and_then(parse_num)
            .unwrap_or(header.mtime().unwrap_or(0));
        let mode = header.mode().map_err(io_err)?;
        let dev = || -> Result<(u32, u32), ArchiveError> {
            Ok((
                header.device_major().map_err(io_err)?.unwrap_or(0),
                header.device_minor().map_err(io_err)?.unwrap_or(0),
            ))
        };
        let node_kind = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let len = entry.size();
                content_bytes += len;
                if len <= KEEP_SMALL_FILES {
                    // Small files (configuration, mostly) are kept: stages that read
                    // os-release, SELinux config or policy files then need no further pass
                    // over the archive, at the cost of a few MiB.
                    let mut data = Vec::with_capacity(len as usize);
                    entry.read_to_end(&mut data).map_err(io_err)?;
                    Kind::File(Blob::bytes(data))
                } else {
                    Kind::File(Blob::Archive {
                        source: source.clone(),
                        entry: this,
                        len,
                    })
                }
            }
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                Kind::Symlink(target)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                tree.link(&name_bytes, &target).map_err(entry_err)?;
                entries += 1;
                continue;
            }
            EntryType::Char => {
                let (major, minor) = dev()?;
                Kind::CharDev { major, minor }
            }
            EntryType::Block => {
                let (major, minor) = dev()?;
                Kind::BlockDev { major, minor }
            }
            EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(ArchiveError::Unsupported {
                    path: path.to_path_buf(),
                    entry: name,
                    kind: format!("'{}' ({})", other.as_byte() as char, type_name(other)),
                })
            }
        };
        let mut inode = Inode::new(node_kind, mode, uid, gid, mtime);
        for (k, v) in &exts {
            if let Some(xname) = k.strip_prefix("SCHILY.xattr.") {
                inode.xattrs.insert(xname.as_bytes().to_vec(), v.clone());
            }
        }
        tree.insert(&name_bytes, inode).map_err(entry_err)?;
        entries += 1;
    }
    drop(archive);
    // Drain what the tar reader left (end-of-archive padding) so the hash covers the file.
    io::copy(&mut buffered, &mut io::sink()).map_err(io_err)?;
    let hashing = buffered.into_inner();
    Ok(LoadStats {
        sha256: hex::encode(hashing.hasher.finalize()),
        size: hashing.count,
        entries,
        content_bytes,
    })
}

impl ArchiveSource {
    /// Streams the archive once and hands each wanted entry's bytes to `sink`. `wanted` must be
    /// sorted by entry number; an entry wanted under several keys is buffered once.
    pub fn read_entries<K: Copy>(
        &self,
        wanted: &[(u64, K)],
        sink: &mut dyn FnMut(K, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let ctx = |e: io::Error| {
            io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
        };
        let file = File::open(&self.path).map_err(ctx)?;
        let reader = BufReader::with_capacity(1 << 16, file);
        let mut archive = tar::Archive::new(decompressor(self.compression, reader).map_err(ctx)?);
        let mut next = 0usize;
        let mut ordinal = 0u64;
        for entry in archive.entries().map_err(ctx)? {
            let mut entry = entry.map_err(ctx)?;
            if is_metadata(entry.header().entry_type()) {
                continue;
            }
            // Keep numbering identical to `load`, which enumerates the same iterator.
            let this = ordinal;
            ordinal += 1;
            if wanted[next].0 != this {
                continue;
            }
            let same = wanted[next..].iter().take_while(|w| w.0 == this).count();
            if same == 1 {
                sink(wanted[next].1, &mut entry)?;
            } else {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(ctx)?;
                for w in &wanted[next..next + same] {
                    sink(w.1, &mut buf.as_slice())?;
                }
            }
            next += same;
            if next == wanted.len() {
                return Ok(());
            }
        }
        Err(io::Error::other(ArchiveError::Changed {
            path: self.path.clone(),
            entry: wanted[next].0,
        }))
    }
}
