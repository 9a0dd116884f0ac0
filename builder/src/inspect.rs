//! `rke2-image inspect`: reads an image file back — partition table, verity superblock,
//! loader entries and command line, the embedded manifest — and cross-checks them.

use std::path::Path;

use rke2_image_contract::gpt::Table;
use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::{cmdline, partitions, paths, verity};
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub file: String,
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionView>,
    pub loader_conf: String,
    pub entries: Vec<ParsedEntry>,
    /// Root hash from the default entry's command line.
    pub root_hash: Option<String>,
    pub verity: Vec<VerityView>,
    pub manifest: Option<Manifest>,
    /// Disagreements between the parts read back (empty when the image is consistent).
    pub problems: Vec<String>,
}

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
    let region = |label: &str| {
        parts
            .iter()
            .find(|p| p.label == label)
            .map(|p| (p.first_lba * table.sector_size, p.size))
    };
    let (esp_off, esp_size) =
        region(partitions::ESP.label).ok_or_else(|| err("no partition labelled `esp`".into()))?;
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
    let manifest: Option<Manifest> = match files.get(paths::ESP_MANIFEST) {
        None => {
            problems.push(format!("no {} on the ESP", paths::ESP_MANIFEST));
            None
        }
        Some(b) => match serde_json::from_slice(b) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(format!("{}: {e}", paths::ESP_MANIFEST));
                None
            }
        },
    };
    let mut verity_views = Vec::new();
    for label in [
        partitions::ROOT_A_VERITY.label,
        partitions::ROOT_B_VERITY.label,
    ] {
        let Some((off, _)) = region(label) else {
            continue;
        };
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
        if let Some(v) = verity_views
            .iter()
            .find(|v| v.partition == partitions::ROOT_A_VERITY.label)
        {
            if v.salt != m.verity.salt || v.data_blocks != m.verity.data_blocks {
                problems
                    .push("verity superblock of root-a-verity differs from the manifest".into());
            }
        }
        if m.disk.disk_guid != table.disk_guid.to_string() {
            problems.push("disk GUID differs from the manifest".into());
        }
    }
    Ok(Report {
        file: path.display().to_string(),
        size,
        disk_guid: table.disk_guid.to_string(),
        partitions: parts,
        loader_conf,
        entries,
        root_hash,
        verity: verity_views,
        manifest,
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
    let _ = writeln!(s, "image      {} ({} MiB)", r.file, r.size / (1024 * 1024));
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
