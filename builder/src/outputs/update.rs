//! The `update` output: `<name>-<version>.update`, the signed A/B update bundle that
//! `rke2-update apply` writes into a node's other slot. The format is the contract's
//! (`rke2_image_contract::update`): an uncompressed ustar of `update.json`, its ed25519
//! signature, the embedded manifest, the two slot UKIs, the verity hash device and the EROFS
//! root, in that order.
//!
//! The root and hash device are cut out of the finished raw temporary by offset (so they are
//! the raw image's root-a bytes by construction) and streamed twice: once to hash them for
//! `update.json`, which comes first and pins every member, then into the tar. Nothing larger
//! than a UKI is held in memory. Every header is fixed (mode 0444, owner 0:0, no user or
//! group names, mtime = the build epoch), so the same pieces give the same bytes.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use rke2_image_contract::update::{self, Member, SlotCmdline, UpdateInfo};
use sha2::{Digest, Sha256};

use crate::pipeline::{invalid, stage, BuildError};
use crate::publish::Outputs;
use crate::sign;

/// File name suffix of the output.
pub const SUFFIX: &str = update::SUFFIX;

/// Where a member's bytes come from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    /// (offset, length) in the raw temporary.
    Region(u64, u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Region(_, len) => *len,
        }
    }
}

/// What the emitter reads.
pub(crate) struct Pieces<'a> {
    /// The finished raw temporary.
    pub raw: &'a File,
    pub name: &'a str,
    pub version: &'a str,
    pub epoch: u64,
    pub root_hash: &'a str,
    /// The embedded manifest (the ESP's copy).
    pub manifest: &'a [u8],
    /// (command line, UKI bytes) of slot a and slot b.
    pub uki_a: (&'a str, &'a [u8]),
    pub uki_b: (&'a str, &'a [u8]),
    /// (offset, length) of the verity hash device and the EROFS root in `raw`.
    pub verity: (u64, u64),
    pub root: (u64, u64),
    pub key: &'a SigningKey,
}

/// A reader over `len` bytes at `offset` of `f` (positioned reads: the file is shared).
struct RegionReader<'a> {
    f: &'a File,
    at: u64,
    end: u64,
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.end - self.at) as usize);
        if n == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..n], self.at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.at += n as u64;
        Ok(n)
    }
}

fn reader<'a>(raw: &'a File, s: &Source<'a>) -> Box<dyn Read + 'a> {
    match *s {
        Source::Bytes(b) => Box::new(b),
        Source::Region(offset, len) => Box::new(RegionReader {
            f: raw,
            at: offset,
            end: offset + len,
        }),
    }
}

/// The members after `update.json` and its signature, in bundle order.
fn members<'a>(p: &Pieces<'a>) -> [(&'static str, Source<'a>); 5] {
    [
        (update::MANIFEST, Source::Bytes(p.manifest)),
        (update::UKI_A, Source::Bytes(p.uki_a.1)),
        (update::UKI_B, Source::Bytes(p.uki_b.1)),
        (update::VERITY, Source::Region(p.verity.0, p.verity.1)),
        (update::ROOT, Source::Region(p.root.0, p.root.1)),
    ]
}

/// `update.json`'s bytes: pretty JSON with a trailing newline.
pub fn info_bytes(info: &UpdateInfo) -> Vec<u8> {
    // Serialising plain strings and numbers cannot fail.
    let mut out = serde_json::to_vec_pretty(info).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The `update.json` of these pieces (hashes every member: one pass over the root).
pub(crate) fn info(p: &Pieces) -> std::io::Result<UpdateInfo> {
    let mut list = Vec::new();
    for (name, src) in members(p) {
        let mut h = Sha256::new();
        let n = std::io::copy(&mut reader(p.raw, &src), &mut h)?;
        list.push(Member {
            name: name.into(),
            size: n,
            sha256: hex::encode(h.finalize()),
        });
    }
    Ok(UpdateInfo {
        schema: update::SCHEMA.into(),
        image: p.name.into(),
        version: p.version.into(),
        architecture: update::ARCH_X86_64.into(),
        epoch: p.epoch,
        root_hash: p.root_hash.into(),
        root_size: p.root.1,
        verity_size: p.verity.1,
        members: list,
        cmdlines: vec![
            SlotCmdline {
                slot: "a".into(),
                cmdline: p.uki_a.0.into(),
            },
            SlotCmdline {
                slot: "b".into(),
                cmdline: p.uki_b.0.into(),
            },
        ],
    })
}

/// A member's ustar header: everything fixed but the name and size.
fn header(name: &str, size: u64, epoch: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes the bundle to `out`.
pub(crate) fn write(p: &Pieces, out: impl Write) -> std::io::Result<UpdateInfo> {
    let info = info(p)?;
    let json = info_bytes(&info);
    let sig = sign::sign(p.key, &json);
    let mut tar = tar::Builder::new(out);
    tar.append(
        &header(update::INFO, json.len() as u64, p.epoch)?,
        &json[..],
    )?;
    tar.append(
        &header(update::SIGNATURE, sig.len() as u64, p.epoch)?,
        &sig[..],
    )?;
    for ((name, src), m) in members(p).iter().zip(&info.members) {
        // A region that changed between the two passes would not match update.json.
        if src.len() != m.size {
            return Err(std::io::Error::other(format!(
                "{name} is {} bytes, hashed as {}",
                src.len(),
                m.size
            )));
        }
        tar.append(&header(name, m.size, p.epoch)?, reader(p.raw, src))?;
    }
    let mut w = tar.into_inner()?;
    w.flush()?;
    Ok(info)
}

/// Writes the staged `<stem>.update`; returns its final path.
pub(crate) fn emit(staged: &mut Outputs, p: &Pieces) -> Result<PathBuf, BuildError> {
    let (temp, path) = staged
        .stage_file(SUFFIX)
        .map_err(|e| invalid("update", e.to_string()))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&temp)
        .map_err(stage("update"))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    write(p, &mut w).map_err(|e| {
        invalid(
            "update",
            format!(
                "writing {}: {}",
                temp.display(),
                crate::limits::io_reason(&e)
            ),
        )
    })?;
    let f = w
        .into_inner()
        .map_err(|e| invalid("update", crate::limits::io_reason(e.error())))?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.epoch);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(stage("update"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_layout_and_determinism() {
        let raw = tempfile::tempfile().unwrap();
        raw.write_all_at(&[7u8; 8192], 4096).unwrap();
        raw.write_all_at(&[9u8; 4096], 16384).unwrap();
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let p = Pieces {
            raw: &raw,
            name: "n",
            version: "1.0",
            epoch: 1_700_000_000,
            root_hash: "ab",
            manifest: b"{}\n",
            uki_a: ("rke2.slot=a", b"MZa"),
            uki_b: ("rke2.slot=b", b"MZb"),
            verity: (16384, 4096),
            root: (4096, 8192),
            key: &key,
        };
        let mut one = Vec::new();
        let info = write(&p, &mut one).unwrap();
        let mut two = Vec::new();
        write(&p, &mut two).unwrap();
        assert_eq!(one, two);
        let mut names = Vec::new();
        let mut a = tar::Archive::new(&one[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(
                (h.mode().unwrap(), h.uid().unwrap(), h.mtime().unwrap()),
                (0o444, 0, 1_700_000_000)
            );
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(m) = info.member(&name) {
                assert_eq!(m.sha256, hex::encode(Sha256::digest(&data)), "{name}");
            }
            if name == update::SIGNATURE {
                let json = info_bytes(&info);
                assert!(sign::check(
                    &key.verifying_key(),
                    &json,
                    &data.try_into().unwrap()
                ));
            }
            names.push(name);
        }
        let mut want = vec![update::INFO, update::SIGNATURE];
        want.extend(update::MEMBERS);
        assert_eq!(names, want);
        assert_eq!(info.member(update::ROOT).unwrap().size, 8192);
    }
}
