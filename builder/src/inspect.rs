//! `rke2-image inspect`: reads an image file back — partition table, verity superblock,
//! loader entries and command line, the embedded manifest — and cross-checks them.

use std::path::Path;

mod bundle;
pub use bundle::{inspect_bundle, is_bundle, render_bundle, BundleReport, MemberView};

use rke2_image_contract::gpt::Table;
use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::{cmdline, embed, iso9660, partitions, paths, verity};
use serde::Serialize;

use crate::esp::{self, ParsedEntry};
use crate::{fat, uki};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {message}")]
    Image { path: String, message: String },
    /// The file could not be opened or expanded (the message names it).
    #[error("{0}")]
    Open(String),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionView {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub size: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerityView {
    pub partition: String,
    pub data_blocks: u64,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub algorithm: String,
    pub salt: String,
    pub uuid: String,
}

/// What kind of file was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    /// A disk image (raw, or the disk a qcow2 carries).
    Disk,
    /// The `iso` output: partitions are its hybrid GPT, the ESP its El Torito/GPT boot
    /// partition, the manifest and verity data files of its ISO 9660 volume.
    Iso,
}

/// A file of the ISO 9660 volume the node reads.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IsoFileView {
    pub path: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub file: String,
    pub medium: Medium,
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionView>,
    pub loader_conf: String,
    pub entries: Vec<ParsedEntry>,
    /// Root hash from the default entry's command line.
    pub root_hash: Option<String>,
    pub verity: Vec<VerityView>,
    pub manifest: Option<Manifest>,
    /// The `iso` output's files (empty for a disk).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub iso_files: Vec<IsoFileView>,
    /// The ISO's embed area (`iso customize`): `empty`, or the configuration's size and sha256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_config: Option<String>,
    /// Disagreements between the parts read back (empty when the image is consistent).
    pub problems: Vec<String>,
}

/// Reads the image at `path`: a raw disk, a qcow2 (read as the disk it carries) or an ISO
/// of the `iso` output (recognised by its ISO 9660 volume descriptor).
pub fn inspect(path: &Path) -> Result<Report, InspectError> {
    let err = |message: String| InspectError::Image {
        path: path.display().to_string(),
        message,
    };
    // A qcow2 is read as the disk it carries.
    let disk =
        crate::outputs::qcow2::Disk::open(path).map_err(|e| InspectError::Open(e.to_string()))?;
    let file = disk.file();
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let table = Table::read(file, size, partitions::SECTOR)
        .map_err(|e| err(format!("partition table: {e}")))?;
    let mut problems: Vec<String> = table
        .damaged
        .iter()
        .map(|(copy, why)| format!("GPT {copy:?} copy is damaged: {why}"))
        .collect();
    let mut parts = Vec::new();
    for (i, e) in table.entries.iter().enumerate() {
        if let Some(e) = e {
            parts.push(PartitionView {
                number: i as u32 + 1,
                label: e.name.clone(),
                type_guid: e.type_guid.to_string(),
                guid: e.guid.to_string(),
                first_lba: e.first_lba,
                last_lba: e.last_lba,
                size: (e.last_lba + 1 - e.first_lba) * table.sector_size,
            });
        }
    }
    let medium = match iso9660::find(file, cmdline::ISO_MANIFEST_FILE) {
        Err(iso9660::IsoError::NotIso) => Medium::Disk,
        _ => Medium::Iso,
    };
    // The disk's ESP is the partition labelled `esp`; the ISO's is its partition of the ESP
    // type (xorriso names it itself).
    let esp_type = partitions::ESP.type_guid;
    let (esp_off, esp_size) = parts
        .iter()
        .find(|p| match medium {
            Medium::Disk => p.label == partitions::ESP.label,
            Medium::Iso => p.type_guid.eq_ignore_ascii_case(esp_type),
        })
        .map(|p| (p.first_lba * table.sector_size, p.size))
        .ok_or_else(|| {
            err(match medium {
                Medium::Disk => "no partition labelled `esp`".into(),
                Medium::Iso => format!("no partition of the ESP type {esp_type} in its GPT"),
            })
        })?;
    let files = fat::read_all(file, esp_off, esp_size).map_err(|e| err(format!("ESP: {e}")))?;
    let text = |p: &str| {
        files
            .get(p)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let loader_conf = text(paths::ESP_LOADER_CONF).unwrap_or_default();
    let mut entries: Vec<ParsedEntry> = files
        .iter()
        .filter(|(p, _)| {
            p.starts_with(&format!("{}/", paths::ESP_ENTRIES_DIR)) && p.ends_with(".conf")
        })
        .map(|(p, b)| esp::parse_entry(p, &String::from_utf8_lossy(b)))
        .collect();
    for (p, b) in files
        .iter()
        .filter(|(p, _)| p.starts_with("EFI/Linux/") && p.ends_with(".efi"))
    {
        match uki_entry(p, b) {
            Ok(e) => entries.push(e),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let root_hash = entries
        .first()
        .and_then(|e| cmdline::get(&e.options, cmdline::ROOT_HASH))
        .map(str::to_string);
    // The builder writes each of these keys once; several (an injected `options` or `linux`
    // line) mean the entry was not written by it, whatever the merged view says.
    for (p, b) in files.iter().filter(|(p, _)| {
        p.starts_with(&format!("{}/", paths::ESP_ENTRIES_DIR)) && p.ends_with(".conf")
    }) {
        let text = String::from_utf8_lossy(b);
        for key in ["title", "version", "linux", "options"] {
            let n = text
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(key))
                .count();
            if n > 1 {
                problems.push(format!("{p}: {n} `{key}` lines (the builder writes one)"));
            }
        }
    }
    for e in entries.iter().filter(|e| !e.linux.is_empty()) {
        for f in std::iter::once(&e.linux).chain(e.initrd.iter()) {
            if !files.contains_key(f.trim_start_matches('/')) {
                problems.push(format!(
                    "{}: refers to {f}, which is not on the ESP",
                    e.file
                ));
            }
        }
    }
    // Where the manifest and the verity superblocks are: on the disk, the ESP and the
    // verity partitions; on the ISO, files of its ISO 9660 volume.
    let mut iso_files = Vec::new();
    let mut embedded_config = None;
    let (manifest_bytes, manifest_at, verity_at) = match medium {
        Medium::Disk => {
            let region = |label: &str| {
                parts
                    .iter()
                    .find(|p| p.label == label)
                    .map(|p| p.first_lba * table.sector_size)
            };
            let verity_at: Vec<(String, u64)> = [
                partitions::ROOT_A_VERITY.label,
                partitions::ROOT_B_VERITY.label,
            ]
            .into_iter()
            .filter_map(|l| region(l).map(|o| (l.to_string(), o)))
            .collect();
            (
                files.get(paths::ESP_MANIFEST).cloned(),
                format!("{} on the ESP", paths::ESP_MANIFEST),
                verity_at,
            )
        }
        Medium::Iso => {
            let mut found = |p: &str| match iso9660::find(file, p) {
                Ok(e) => {
                    iso_files.push(IsoFileView {
                        path: p.to_string(),
                        offset: e.offset,
                        size: e.len,
                    });
                    Some(e)
                }
                Err(e) => {
                    problems.push(format!("{p}: {e}"));
                    None
                }
            };
            let m = found(cmdline::ISO_MANIFEST_FILE);
            let root = found(cmdline::ISO_ROOT_FILE);
            let ver = found(cmdline::ISO_VERITY_FILE);
            if let Some(e) = found(embed::CONFIG_FILE) {
                let mut area = vec![0u8; e.len.min(embed::AREA_BYTES as u64) as usize];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut area, e.offset)
                    .map_err(|x| err(format!("{}: {x}", embed::CONFIG_FILE)))?;
                match embed::decode(&area, area.len()) {
                    Ok(None) => embedded_config = Some("empty".into()),
                    Ok(Some(c)) => {
                        use sha2::Digest;
                        embedded_config = Some(format!(
                            "{} bytes, sha256 {}",
                            c.len(),
                            hex::encode(sha2::Sha256::digest(&c))
                        ));
                    }
                    Err(x) => problems.push(format!("{}: {x}", embed::CONFIG_FILE)),
                }
            }
            let mut bytes = None;
            if let Some(e) = m {
                let mut b = vec![0u8; e.len.min(16 << 20) as usize];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut b, e.offset)
                    .map_err(|x| err(format!("{}: {x}", cmdline::ISO_MANIFEST_FILE)))?;
                bytes = Some(b);
            }
            if let (Some(r), Some(m)) = (root, bytes.as_deref()) {
                if let Ok(m) = serde_json::from_slice::<Manifest>(m) {
                    let want = m.verity.data_blocks * u64::from(m.verity.data_block_size);
                    if r.len != want {
                        problems.push(format!(
                            "{} is {} bytes; the manifest's root is {want}",
                            cmdline::ISO_ROOT_FILE,
                            r.len
                        ));
                    }
                }
            }
            if entries.is_empty() {
                problems.push("no boot entry on the ISO's ESP".into());
            }
            for e in &entries {
                if cmdline::get(&e.options, cmdline::ROOT_SOURCE) != Some(cmdline::ROOT_ISO) {
                    problems.push(format!(
                        "{}: the command line lacks {}={} (a boot from the ISO reads its root from the medium)",
                        e.file,
                        cmdline::ROOT_SOURCE,
                        cmdline::ROOT_ISO
                    ));
                }
            }
            (
                bytes,
                cmdline::ISO_MANIFEST_FILE.to_string(),
                ver.map(|e| (cmdline::ISO_VERITY_FILE.to_string(), e.offset))
                    .into_iter()
                    .collect(),
            )
        }
    };
    let manifest: Option<Manifest> = match manifest_bytes {
        None => {
            problems.push(format!("no {manifest_at}"));
            None
        }
        Some(b) => match serde_json::from_slice(&b) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(format!("{manifest_at}: {e}"));
                None
            }
        },
    };
    let mut verity_views = Vec::new();
    for (label, off) in &verity_at {
        let (label, off) = (label.as_str(), *off);
        let mut sb = vec![0u8; verity::SUPERBLOCK_SIZE as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut sb, off)
            .map_err(|e| err(format!("{label}: {e}")))?;
        if sb.iter().all(|&b| b == 0) {
            continue; // empty slot
        }
        match verity::Superblock::parse(&sb) {
            Ok(p) => verity_views.push(VerityView {
                partition: label.into(),
                data_blocks: p.data_blocks,
                data_block_size: p.data_block_size,
                hash_block_size: p.hash_block_size,
                algorithm: p.algorithm.clone(),
                salt: hex::encode(&p.salt),
                uuid: verity::uuid_string(&p.uuid),
            }),
            Err(e) => problems.push(format!("{label}: verity superblock: {e}")),
        }
    }
    if let Some(m) = &manifest {
        if root_hash.as_deref() != Some(m.verity.root_hash.as_str()) {
            problems.push(format!(
                "loader entry root hash {:?} differs from the manifest's {}",
                root_hash, m.verity.root_hash
            ));
        }
        let active = match medium {
            Medium::Disk => partitions::ROOT_A_VERITY.label,
            Medium::Iso => cmdline::ISO_VERITY_FILE,
        };
        if let Some(v) = verity_views.iter().find(|v| v.partition == active) {
            if v.salt != m.verity.salt || v.data_blocks != m.verity.data_blocks {
                problems.push(format!(
                    "verity superblock of {active} differs from the manifest"
                ));
            }
        }
        // The ISO's own GPT is xorriso's, not the disk's the manifest describes.
        if medium == Medium::Disk && m.disk.disk_guid != table.disk_guid.to_string() {
            problems.push("disk GUID differs from the manifest".into());
        }
    }
    Ok(Report {
        file: path.display().to_string(),
        medium,
        size,
        disk_guid: table.disk_guid.to_string(),
        partitions: parts,
        loader_conf,
        entries,
        root_hash,
        verity: verity_views,
        manifest,
        iso_files,
        embedded_config,
        problems,
    })
}

/// A type #2 entry read back from the UKI itself: command line from `.cmdline`, title and
/// version from `.osrel` (as systemd-boot shows them). `linux` stays empty: the kernel is inside.
pub fn uki_entry(file: &str, pe: &[u8]) -> Result<ParsedEntry, uki::PeError> {
    let text = |name: &str| -> Result<String, uki::PeError> {
        Ok(uki::section(pe, name, file)?
            .map(|b| {
                String::from_utf8_lossy(b)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default())
    };
    let osrel = text(uki::OSREL)?;
    let field = |k: &str| {
        osrel.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    Ok(ParsedEntry {
        file: file.to_string(),
        title: field("PRETTY_NAME")
            .or_else(|| field("NAME"))
            .unwrap_or_default(),
        version: field("IMAGE_VERSION")
            .or_else(|| field("VERSION_ID"))
            .unwrap_or_default(),
        linux: String::new(),
        initrd: Vec::new(),
        options: text(uki::CMDLINE)?.trim().to_string(),
    })
}

/// Human-readable form of a report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let kind = match r.medium {
        Medium::Disk => "disk image",
        Medium::Iso => "ISO (hybrid: CD-ROM and disk)",
    };
    let _ = writeln!(
        s,
        "image      {} ({} MiB, {kind})",
        r.file,
        r.size / (1024 * 1024)
    );
    let _ = writeln!(s, "disk guid  {}", r.disk_guid);
    let _ = writeln!(s, "\npartitions");
    for p in &r.partitions {
        let _ = writeln!(
            s,
            "  {:>2} {:<14} {} {} lba {}..{} ({} MiB)",
            p.number,
            p.label,
            p.type_guid,
            p.guid,
            p.first_lba,
            p.last_lba,
            p.size / (1024 * 1024)
        );
    }
    if !r.iso_files.is_empty() {
        let _ = writeln!(s, "\niso 9660 files");
        for f in &r.iso_files {
            let _ = writeln!(s, "  {:<22} {} bytes at byte {}", f.path, f.size, f.offset);
        }
    }
    let _ = writeln!(
        s,
        "\nroot hash  {}",
        r.root_hash.as_deref().unwrap_or("(none)")
    );
    for v in &r.verity {
        let _ = writeln!(
            s,
            "verity     {}: {} x {} B data blocks, {} B hash blocks, {}, salt {}, uuid {}",
            v.partition,
            v.data_blocks,
            v.data_block_size,
            v.hash_block_size,
            v.algorithm,
            v.salt,
            v.uuid
        );
    }
    let _ = writeln!(s, "\nloader.conf\n{}", indent(&r.loader_conf));
    for e in &r.entries {
        let _ = writeln!(
            s,
            "entry {}\n  title   {}\n  linux   {}\n  initrd  {}\n  options {}",
            e.file,
            e.title,
            e.linux,
            e.initrd.join(" "),
            e.options
        );
    }
    if let Some(m) = &r.manifest {
        let _ = writeln!(
            s,
            "\nmanifest   {} {} (epoch {}), built by {} {}",
            m.image.name, m.image.version, m.image.epoch, m.tool.name, m.tool.version
        );
        let _ = writeln!(
            s,
            "kernel     {}, initrd {} KiB sha256 {}",
            m.boot.kernel_version,
            m.boot.initrd_size / 1024,
            m.boot.initrd_sha256
        );
        let _ = writeln!(s, "inputs");
        for i in &m.inputs {
            let _ = writeln!(
                s,
                "  {:<12} {} {} ({} bytes)",
                i.kind, i.sha256, i.name, i.size
            );
        }
        if let Some(r) = &m.rke2 {
            let _ = writeln!(
                s,
                "rke2       {} with {} preloaded images",
                r.version,
                r.images.len()
            );
            for i in &r.images {
                let _ = writeln!(s, "  {i}");
            }
        }
        if !m.checks.is_empty() {
            let _ = writeln!(s, "checks");
            for c in &m.checks {
                let _ = writeln!(s, "  {:<20} {} {}", c.name, c.result, c.detail);
            }
        }
    }
    if r.problems.is_empty() {
        let _ = writeln!(s, "\nconsistent: partition table, ESP, loader entry, verity superblock and manifest agree");
    } else {
        let _ = writeln!(s, "\nPROBLEMS");
        for p in &r.problems {
            let _ = writeln!(s, "  {p}");
        }
    }
    s
}

fn indent(t: &str) -> String {
    t.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
