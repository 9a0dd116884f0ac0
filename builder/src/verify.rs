//! `rke2-image verify`: checks an image offline, from its bytes alone, against the manifest
//! embedded in its ESP and that manifest's ed25519 signature.
//!
//! Checked: both GPT copies (header and entry-array CRCs, as [`Table::read`] validates them)
//! and every entry against the manifest's partitions (type, GUID, LBAs, label); the dm-verity
//! superblock, every hash of the tree recomputed from the root data and compared with the
//! stored tree level by level, the root hash against the manifest; every ESP file the manifest
//! lists (size, sha256) and no unlisted ones; each UKI's `.cmdline` against the manifest and
//! the root hash; the signature. Every finding names the partition or file and, where there is
//! one, the byte offset in the image.
//!
//! The image is read through a [`Medium`]: positioned reads over the raw disk bytes. The raw
//! file is one; a qcow2 is expanded to one first ([`crate::outputs::qcow2::Disk`]).

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rke2_image_contract::gpt::Table;
use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::{cmdline, partitions, paths, verity};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::sign::{self, EspSignature};
use crate::{fat, uki};

/// The disk an image carries, as positioned reads (a raw file, or a reader of a container
/// format that presents the raw content).
pub trait Medium: FileExt + Sync {
    /// Size of the disk in bytes.
    fn disk_size(&self) -> std::io::Result<u64>;
}

impl Medium for File {
    fn disk_size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// One thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The partition (`root-a`, `GPT entry 2`), or the ESP file path.
    pub area: String,
    /// Byte offset in the image, when the finding has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{} at byte {o}: {}", self.area, self.message),
            None => write!(f, "{}: {}", self.area, self.message),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What was checked and held, in order (for `--json` readers and the summary).
    pub checked: Vec<String>,
    pub findings: Vec<Finding>,
    /// The root hash the manifest records, when the manifest could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_hash: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

struct Ctx {
    checked: Vec<String>,
    findings: Vec<Finding>,
}

impl Ctx {
    fn find(&mut self, area: impl Into<String>, offset: Option<u64>, message: impl Into<String>) {
        self.findings.push(Finding {
            area: area.into(),
            offset,
            message: message.into(),
        });
    }
}

/// Verifies the image at `path`. `key`: the public key the signature must verify with
/// (`None`: everything but the signature, as `sign` checks before signing).
/// A qcow2 image is checked on the disk it carries (see [`crate::outputs::qcow2::Disk`]).
pub fn verify_path(path: &Path, key: Option<&VerifyingKey>) -> std::io::Result<Report> {
    // Errors name the file (the caller adds no path of its own).
    let disk = crate::outputs::qcow2::Disk::open(path)?;
    let f = disk.file();
    let size = f
        .disk_size()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(verify(f, size, key))
}

/// Verifies the disk in `m` of `size` bytes.
pub fn verify<M: Medium>(m: &M, size: u64, key: Option<&VerifyingKey>) -> Report {
    let mut c = Ctx {
        checked: Vec::new(),
        findings: Vec::new(),
    };
    let root_hash = run(m, size, key, &mut c);
    Report {
        checked: c.checked,
        findings: c.findings,
        root_hash,
    }
}

fn run<M: Medium>(m: &M, size: u64, key: Option<&VerifyingKey>, c: &mut Ctx) -> Option<String> {
    let ss = partitions::SECTOR;
    // --- GPT -------------------------------------------------------------------------------
    let table = match Table::read(m, size, ss) {
        Ok(t) => t,
        Err(e) => {
            c.find("GPT", Some(ss), e.to_string());
            return None;
        }
    };
    for (copy, why) in &table.damaged {
        let (area, at) = match copy {
            rke2_image_contract::gpt::TableCopy::Primary => ("GPT primary", ss),
            rke2_image_contract::gpt::TableCopy::Backup => {
                ("GPT backup", (table.disk_sectors - 1) * ss)
            }
        };
        c.find(area, Some(at), why.clone());
    }
    if table.damaged.is_empty() {
        c.checked
            .push("GPT: primary and backup headers and entry arrays (CRC32)".into());
    }

    // --- ESP, manifest, signature ----------------------------------------------------------
    let Some((_, esp)) = table.find(partitions::ESP.label) else {
        c.find("GPT", Some(2 * ss), "no partition labelled `esp`");
        return None;
    };
    let esp_off = esp.first_lba * ss;
    let located = match fat::read_located(m, esp_off, esp.sectors() * ss) {
        Ok(f) => f,
        Err(e) => {
            c.find("esp", Some(esp_off), e.to_string());
            return None;
        }
    };
    let files = &located.files;
    let Some(manifest_bytes) = files.get(paths::ESP_MANIFEST) else {
        c.find(paths::ESP_MANIFEST, None, "missing from the ESP");
        return None;
    };
    match files.get(paths::ESP_SIGNATURE).map(|b| sign::parse_esp_block(b)) {
        None => c.find(paths::ESP_SIGNATURE, None, "missing from the ESP: the image is not signed"),
        Some(EspSignature::Unsigned) => c.find(
            paths::ESP_SIGNATURE,
            None,
            "the image is not signed (rke2-image sign IMAGE --key KEY.pem)",
        ),
        Some(EspSignature::Malformed(why)) => c.find(paths::ESP_SIGNATURE, None, why),
        Some(EspSignature::Signed(s)) => match key {
            None => {}
            Some(k) if sign::check(k, manifest_bytes, &s) => c
                .checked
                .push(format!("signature of {} (ed25519)", paths::ESP_MANIFEST)),
            Some(_) => c.find(
                paths::ESP_SIGNATURE,
                None,
                format!(
                    "the signature does not verify {} with the given public key (manifest altered, or another key)",
                    paths::ESP_MANIFEST
                ),
            ),
        },
    }
    let manifest: Manifest = match serde_json::from_slice(manifest_bytes) {
        Ok(mf) => mf,
        Err(e) => {
            c.find(paths::ESP_MANIFEST, None, format!("unreadable: {e}"));
            return None;
        }
    };

    check_partitions(&table, &manifest, c);
    check_esp(&located, &manifest, c);
    check_verity(m, &manifest, c);
    Some(manifest.verity.root_hash)
}

fn check_partitions(table: &Table, mf: &Manifest, c: &mut Ctx) {
    let ss = table.sector_size;
    let before = c.findings.len();
    if table.disk_guid.to_string() != mf.disk.disk_guid {
        c.find(
            "GPT",
            Some(ss),
            format!(
                "disk GUID {} differs from the manifest's {}",
                table.disk_guid, mf.disk.disk_guid
            ),
        );
    }
    for p in &mf.disk.partitions {
        let area = format!("GPT entry {}", p.number);
        let at = Some(2 * ss + u64::from(p.number.saturating_sub(1)) * 128);
        let Some(e) = table.get(p.number) else {
            c.find(
                area,
                at,
                format!("missing (the manifest has `{}` here)", p.label),
            );
            continue;
        };
        let mut diffs = Vec::new();
        if e.name != p.label {
            diffs.push(format!("label {:?} (manifest: {:?})", e.name, p.label));
        }
        if !e.type_guid.to_string().eq_ignore_ascii_case(&p.type_guid) {
            diffs.push(format!("type {} (manifest: {})", e.type_guid, p.type_guid));
        }
        if !e.guid.to_string().eq_ignore_ascii_case(&p.guid) {
            diffs.push(format!("GUID {} (manifest: {})", e.guid, p.guid));
        }
        if (e.first_lba, e.last_lba) != (p.first_lba, p.last_lba) {
            diffs.push(format!(
                "LBA {}..{} (manifest: {}..{})",
                e.first_lba, e.last_lba, p.first_lba, p.last_lba
            ));
        }
        if !diffs.is_empty() {
            c.find(area, at, diffs.join(", "));
        }
    }
    for (n, e) in table.partitions() {
        if !mf.disk.partitions.iter().any(|p| p.number == n) {
            c.find(
                format!("GPT entry {n}"),
                Some(2 * ss + u64::from(n - 1) * 128),
                format!("partition {:?} is not in the manifest", e.name),
            );
        }
    }
    if c.findings.len() == before {
        c.checked.push(format!(
            "{} partition entries match the manifest",
            mf.disk.partitions.len()
        ));
    }
}

fn check_esp(located: &fat::Located, mf: &Manifest, c: &mut Ctx) {
    let before = c.findings.len();
    let files = &located.files;
    // Where a file starts in the image, for the finding.
    let at = |p: &str| located.extents.get(p).and_then(|e| e.first()).map(|e| e.0);
    if mf.esp_files.is_empty() {
        c.find(
            paths::ESP_MANIFEST,
            None,
            "lists no ESP files (built by an older rke2-image; rebuild to verify the ESP)",
        );
    }
    for f in &mf.esp_files {
        match files.get(&f.path) {
            None => c.find(
                &f.path,
                None,
                "listed in the manifest but missing from the ESP",
            ),
            Some(b) if b.len() as u64 != f.size => c.find(
                &f.path,
                at(&f.path),
                format!("{} bytes, the manifest says {}", b.len(), f.size),
            ),
            Some(b) => {
                let h = hex::encode(Sha256::digest(b));
                if h != f.sha256 {
                    c.find(
                        &f.path,
                        at(&f.path),
                        format!("sha256 {h} differs from the manifest's {}", f.sha256),
                    );
                }
            }
        }
    }
    for p in files.keys() {
        let own = p == paths::ESP_MANIFEST || p == paths::ESP_SIGNATURE;
        if !own && !mf.esp_files.iter().any(|f| &f.path == p) {
            c.find(p, None, "on the ESP but not in the manifest");
        }
    }
    if mf.ukis.is_empty() {
        c.find(paths::ESP_MANIFEST, None, "lists no UKI");
    }
    for u in &mf.ukis {
        let Some(b) = files.get(&u.path) else {
            c.find(
                &u.path,
                None,
                "UKI listed in the manifest but missing from the ESP",
            );
            continue;
        };
        // Its sha256 is checked with the ESP files; here what the kernel will be told.
        let line = match uki::section(b, uki::CMDLINE, &u.path) {
            Ok(Some(s)) => String::from_utf8_lossy(s)
                .trim_end_matches('\0')
                .to_string(),
            Ok(None) => {
                c.find(&u.path, None, "UKI has no .cmdline section");
                continue;
            }
            Err(e) => {
                c.find(&u.path, None, format!("not a readable PE file: {e}"));
                continue;
            }
        };
        if line.trim() != u.cmdline.trim() || line.trim() != mf.boot.cmdline.trim() {
            c.find(
                &u.path,
                None,
                format!(
                    ".cmdline {line:?} differs from the manifest's {:?}",
                    u.cmdline
                ),
            );
        }
        if cmdline::get(&line, cmdline::ROOT_HASH) != Some(mf.verity.root_hash.as_str()) {
            c.find(
                &u.path,
                None,
                format!(
                    ".cmdline does not carry {}={}",
                    cmdline::ROOT_HASH,
                    mf.verity.root_hash
                ),
            );
        }
    }
    if c.findings.len() == before {
        c.checked.push(format!(
            "{} ESP files (sha256) and {} UKI command line(s)",
            mf.esp_files.len(),
            mf.ukis.len()
        ));
    }
}

/// Recomputes the tree from the data partition and compares each level with the stored one;
/// the first differing hash of each level is reported (a flipped data byte shows as a level-0
/// mismatch naming the data block; a flipped hash byte as a mismatch one level up).
fn check_verity<M: Medium>(m: &M, mf: &Manifest, c: &mut Ctx) {
    let ss = mf.disk.sector_size;
    let region = |label: &str| {
        mf.disk
            .partitions
            .iter()
            .find(|p| p.label == label)
            .map(|p| (p.first_lba * ss, (p.last_lba + 1 - p.first_lba) * ss))
    };
    let data_label = partitions::ROOT_A.label;
    let hash_label = partitions::ROOT_A_VERITY.label;
    let (Some((data_off, data_len)), Some((hash_off, hash_len))) =
        (region(data_label), region(hash_label))
    else {
        c.find(
            paths::ESP_MANIFEST,
            None,
            "has no root-a / root-a-verity partitions",
        );
        return;
    };
    let v = &mf.verity;
    let mut sb = vec![0u8; verity::SUPERBLOCK_SIZE as usize];
    if let Err(e) = m.read_exact_at(&mut sb, hash_off) {
        c.find(
            hash_label,
            Some(hash_off),
            format!("cannot read the superblock: {e}"),
        );
        return;
    }
    let params = match verity::Superblock::parse(&sb) {
        Ok(p) => p,
        Err(e) => {
            c.find(hash_label, Some(hash_off), e.to_string());
            return;
        }
    };
    let expected = (
        hex::encode(&params.salt),
        verity::uuid_string(&params.uuid),
        params.data_blocks,
        params.data_block_size,
        params.hash_block_size,
        params.algorithm.as_str(),
    );
    if expected
        != (
            v.salt.clone(),
            v.uuid.clone(),
            v.data_blocks,
            v.data_block_size,
            v.hash_block_size,
            v.hash_algorithm.as_str(),
        )
    {
        c.find(
            hash_label,
            Some(hash_off),
            format!(
                "superblock (salt {}, uuid {}, {} x {} B blocks) differs from the manifest's",
                expected.0, expected.1, expected.2, expected.3
            ),
        );
        return;
    }
    let dbs = u64::from(params.data_block_size);
    let hbs = u64::from(params.hash_block_size);
    if params.data_blocks * dbs > data_len
        || verity::hash_device_size(params.data_blocks, params.hash_block_size) > hash_len
        || params.algorithm != verity::ALGORITHM
    {
        c.find(
            hash_label,
            Some(hash_off),
            "the superblock's geometry does not fit the partitions",
        );
        return;
    }
    let salt = &params.salt;
    let levels = verity::level_offsets(params.data_blocks, params.hash_block_size);
    let mut ok = true;
    // Level by level: `src` blocks hashed and compared with the stored level above them.
    let mut src = (data_label, data_off, dbs, params.data_blocks);
    let mut top_block: Option<Vec<u8>> = None;
    for (lvl, &(lo, lblocks)) in levels.iter().enumerate() {
        let stored_at = hash_off + lo;
        let mut stored = vec![0u8; (lblocks * hbs) as usize];
        if let Err(e) = m.read_exact_at(&mut stored, stored_at) {
            c.find(
                hash_label,
                Some(stored_at),
                format!("cannot read level {lvl}: {e}"),
            );
            return;
        }
        let (label, base, bsize, count) = src;
        let found = hash_compare(m, base, bsize, count, salt, &stored);
        match found {
            Err(e) => {
                c.find(label, Some(base), format!("read error: {e}"));
                return;
            }
            Ok(Some(i)) => {
                ok = false;
                let what = if lvl == 0 {
                    format!("data block {i} does not match its hash in {hash_label}")
                } else {
                    format!("hash block {i} of tree level {} does not match its hash in the level above", lvl - 1)
                };
                c.find(label, Some(base + i * bsize), what);
            }
            Ok(None) => {}
        }
        // Unused digest slots of the last block are zero (as veritysetup writes them).
        let used = count as usize * 32;
        if stored[used..].iter().any(|&b| b != 0) {
            ok = false;
            let at = stored[used..].iter().position(|&b| b != 0).unwrap_or(0) + used;
            c.find(
                hash_label,
                Some(stored_at + at as u64),
                "padding after the last hash is not zero",
            );
        }
        if lvl + 1 == levels.len() {
            top_block = Some(stored[..hbs as usize].to_vec());
        }
        src = (hash_label, stored_at, hbs, lblocks);
    }
    // The root hash is the digest of the top hash block (of the only data block, without a tree).
    let root = match top_block {
        Some(b) => verity::block_digest(salt, &b),
        None => {
            let mut b = vec![0u8; dbs as usize];
            if let Err(e) = m.read_exact_at(&mut b, data_off) {
                c.find(data_label, Some(data_off), e.to_string());
                return;
            }
            verity::block_digest(salt, &b)
        }
    };
    let top_at = levels.last().map(|l| hash_off + l.0).unwrap_or(data_off);
    if hex::encode(root) != v.root_hash {
        ok = false;
        c.find(
            hash_label,
            Some(top_at),
            format!(
                "root hash {} differs from the manifest's {}",
                hex::encode(root),
                v.root_hash
            ),
        );
    }
    if ok {
        c.checked.push(format!(
            "dm-verity: {} data blocks of {data_label}, {} tree level(s), root hash {}",
            params.data_blocks,
            levels.len(),
            v.root_hash
        ));
    }
}

/// Hashes `count` blocks of `bsize` at `base` and compares with the digests in `stored`;
/// the index of the first block whose digest differs. The second core hashes half the
/// blocks: sha256 is the whole cost of `verify`.
fn hash_compare<M: Medium>(
    m: &M,
    base: u64,
    bsize: u64,
    count: u64,
    salt: &[u8],
    stored: &[u8],
) -> std::io::Result<Option<u64>> {
    let range = |from: u64, to: u64| -> std::io::Result<Option<u64>> {
        const CHUNK: u64 = 1 << 20;
        let per_read = (CHUNK / bsize).max(1);
        let mut buf = vec![0u8; (per_read * bsize) as usize];
        let mut i = from;
        while i < to {
            let n = (to - i).min(per_read);
            let b = &mut buf[..(n * bsize) as usize];
            m.read_exact_at(b, base + i * bsize)?;
            for (k, block) in b.chunks_exact(bsize as usize).enumerate() {
                let idx = i + k as u64;
                let want = &stored[(idx * 32) as usize..(idx * 32 + 32) as usize];
                if verity::block_digest(salt, block) != want {
                    return Ok(Some(idx));
                }
            }
            i += n;
        }
        Ok(None)
    };
    if count < 1024 {
        return range(0, count);
    }
    let mid = count / 2;
    std::thread::scope(|s| {
        let hi = s.spawn(|| range(mid, count));
        let lo = range(0, mid)?;
        let hi = hi
            .join()
            .map_err(|_| std::io::Error::other("hashing thread panicked"))??;
        Ok(lo.or(hi))
    })
}
