//! The `raw` output: the disk image the stages wrote their regions into gets its GPT and
//! protective MBR (`disk` stage), then is fsynced and renamed into place with its companions and
//! the published manifest (`outputs` stage).

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use rke2_image_contract::gpt::{Entry, Guid, Table};
use rke2_image_contract::manifest::Manifest;
use rke2_image_contract::partitions::SECTOR;

use crate::pipeline::{stage, BuildError, Partitions};
use crate::{publish, sign};

/// Writes the partition table (primary and backup GPT, protective MBR) of a disk of `disk_size`
/// bytes.
pub(crate) fn write_table(
    out: &File,
    parts: &Partitions,
    disk_size: u64,
) -> Result<(), BuildError> {
    let mut table = Table::new(parts.disk_guid, disk_size, SECTOR).map_err(stage("disk"))?;
    for p in &parts.list {
        table
            .add(
                p.spec.number,
                Entry {
                    type_guid: Guid::parse(p.spec.type_guid).map_err(stage("disk"))?,
                    guid: p.guid,
                    first_lba: p.region.first_lba(),
                    last_lba: p.region.last_lba(),
                    attributes: 0,
                    name: p.spec.label.into(),
                },
            )
            .map_err(stage("disk"))?;
    }
    table.write(out).map_err(stage("disk"))
}

/// Publishes the image (when `raw` is selected) with its companions and the published manifest
/// (the embedded one plus the published files' records), signed when a key is given. Returns
/// the image's and the manifest's final paths.
pub(crate) fn publish(
    outputs: publish::Outputs,
    manifest: &Manifest,
    key: Option<&SigningKey>,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, PathBuf), BuildError> {
    let image = outputs.image_path().to_path_buf();
    let manifest_path = outputs.manifest_path().to_path_buf();
    let hash_start = Instant::now();
    let image_file = outputs.image_kept().then(|| outputs.file());
    let mut records = outputs.companion_records().map_err(stage("outputs"))?;
    records.extend(outputs.dir_records().map_err(stage("outputs"))?);
    let published =
        sign::published_manifest(manifest, image_file, records).map_err(stage("outputs"))?;
    log(&format!(
        "outputs: sha256 of the outputs for the published manifest in {:.1}s",
        hash_start.elapsed().as_secs_f64()
    ));
    let sig = key.map(|k| sign::sign(k, &published));
    outputs
        .publish_signed(&published, sig.as_ref().map(|s| &s[..]))
        .map_err(stage("outputs"))?;
    Ok((image, manifest_path))
}
