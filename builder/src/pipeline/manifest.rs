//! `manifest` (part of the `esp` stage): the embedded manifest (inputs, partition table,
//! verity, boot entry, checks, RKE2, UKIs, ESP files) goes onto the ESP with its signature
//! block; the published copy adds the outputs ([`crate::outputs::raw::publish`]).

use rke2_image_contract::manifest::{self, Manifest};
use rke2_image_contract::{paths, verity};

use super::boot::EspPieces;
use super::compose::Composed;
use super::kernel::Kernel;
use super::layout::{Layout, Partitions};
use super::rootfs::Root;
use super::{stage, BuildContext, BuildError, SECTOR};
use ed25519_dalek::SigningKey;

use crate::sign;
use crate::tree::Blob;

/// Everything the manifest describes.
pub(super) struct Pieces<'a> {
    pub layout: &'a Layout,
    pub partitions: &'a Partitions,
    pub root: &'a Root,
    pub kernel: &'a Kernel,
    pub composed: &'a Composed,
}

/// Builds the manifest and adds it, and its signature block (zeros when unsigned, so
/// `rke2-image sign` can fill it in place), to the ESP's files.
pub(super) fn run(
    ctx: &BuildContext,
    p: &Pieces,
    esp: &mut EspPieces,
    key: Option<&SigningKey>,
) -> Result<Manifest, BuildError> {
    let def = ctx.def;
    let disk_size = p.layout.disk_size;
    let params = &p.root.params;
    let manifest = Manifest {
        schema: manifest::SCHEMA.into(),
        tool: manifest::Tool {
            name: "rke2-image".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        image: manifest::ImageInfo {
            name: def.name.clone(),
            version: def.version.clone(),
            epoch: ctx.epoch,
            file: format!("{}-{}.raw", def.name, def.version),
            size: disk_size,
        },
        inputs: ctx.inputs.clone(),
        disk: manifest::Disk {
            disk_guid: p.partitions.disk_guid.to_string(),
            sector_size: SECTOR,
            size: disk_size,
            partitions: p
                .partitions
                .list
                .iter()
                .map(|part| manifest::Partition {
                    number: part.spec.number,
                    label: part.spec.label.into(),
                    type_guid: part.spec.type_guid.into(),
                    guid: part.guid.to_string(),
                    first_lba: part.region.first_lba(),
                    last_lba: part.region.last_lba(),
                    used: part.used,
                })
                .collect(),
        },
        verity: manifest::Verity {
            root_hash: p.root.root_hash_hex(),
            salt: hex::encode(&params.salt),
            uuid: verity::uuid_string(&params.uuid),
            hash_algorithm: params.algorithm.clone(),
            data_block_size: params.data_block_size,
            hash_block_size: params.hash_block_size,
            data_blocks: params.data_blocks,
        },
        boot: manifest::Boot {
            kernel_version: p.kernel.version.clone(),
            cmdline: esp.cmdline.clone(),
            entry: esp.entry.clone(),
            initrd_size: esp.initrd_size,
            initrd_sha256: esp.initrd_sha256.clone(),
        },
        checks: ctx.checks.clone(),
        rke2: p.composed.rke2.clone(),
        ukis: vec![esp.uki.clone()],
        esp_files: esp.files.clone(),
        // Filled in the published copy only: see `manifest::Manifest::outputs`.
        outputs: Vec::new(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(stage("esp"))?;
    json.push(b'\n');
    let sig = key.map(|k| sign::sign(k, &json));
    esp.content.add(paths::ESP_MANIFEST, Blob::bytes(json));
    esp.content.add(
        paths::ESP_SIGNATURE,
        Blob::bytes(sign::esp_block(sig.as_ref())),
    );
    Ok(manifest)
}
