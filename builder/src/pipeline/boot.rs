//! `initrd` and `esp`: the boot pieces. [`initrd`] builds the initrd and reads the boot files
//! from the base (beside the rootfs stage, on the second core); [`esp_content`] builds the
//! unified kernel image (signed when Secure Boot keys are given) and collects the ESP's files;
//! [`write_esp`] writes them as FAT32 into the ESP region once the manifest is among them.

use std::fs::File;
use std::time::{Duration, Instant};

use rke2_image_contract::{manifest, paths};
use sha2::{Digest, Sha256};

use super::compose::Composed;
use super::kernel::Kernel;
use super::layout::Region;
use super::rootfs::Root;
use super::{invalid, sha256_hex, stage, BuildContext, BuildError};
use crate::definition::Definition;
use crate::tree::{Blob, Tree};
use crate::{esp, fat, initrd, sbom, secureboot, uki};

/// The initrd and the bytes of the boot files, read in one pass over the base.
pub(super) struct BootFiles {
    pub initrd: initrd::Initrd,
    pub systemd_boot: Blob,
    pub kernel: Vec<u8>,
    pub stub: Vec<u8>,
    pub os_release: Vec<u8>,
    /// How long this took (it runs beside the rootfs stage).
    pub time: Duration,
}

/// The ESP's files so far and what the manifest records about them.
pub(super) struct EspPieces {
    pub content: esp::EspContent,
    /// What the files add up to before the manifest and its signature join them.
    pub used: u64,
    /// Path, size and sha256 of those files, sorted by path.
    pub files: Vec<manifest::EspFile>,
    pub uki: manifest::Uki,
    pub cmdline: String,
    pub entry: String,
    pub initrd_size: u64,
    pub initrd_sha256: String,
}

/// Builds the initrd and reads the boot files; takes the tree rather than the context because
/// it runs on its own thread.
pub(super) fn initrd(
    tree: &Tree,
    def: &Definition,
    epoch: u64,
    composed: &Composed,
    kernel: &Kernel,
) -> Result<BootFiles, BuildError> {
    let start = Instant::now();
    let mut modules: Vec<&str> = initrd::BOOT_MODULES.to_vec();
    modules.extend(def.extra_modules.iter().map(String::as_str));
    let rd = initrd::build(
        tree,
        &initrd::Spec {
            init: &composed.init,
            kver: &kernel.version,
            modules: &modules,
            extra_files: &[],
            mtime: epoch,
        },
    )
    .map_err(stage("initrd"))?;
    // One pass over the base for both boot files, kept in memory for the ESP.
    let mut boot_files: [Vec<u8>; 4] = Default::default();
    Tree::read_blobs(
        &[
            (0usize, &kernel.vmlinuz),
            (1, &kernel.systemd_boot),
            (2, &kernel.stub),
            (3, &kernel.os_release),
        ],
        &mut |i, r| r.read_to_end(&mut boot_files[i]).map(|_| ()),
    )
    .map_err(stage("initrd"))?;
    let [kernel, sdboot, stub, osrel] = boot_files;
    Ok(BootFiles {
        initrd: rd,
        systemd_boot: Blob::bytes(sdboot),
        kernel,
        stub,
        os_release: osrel,
        time: start.elapsed(),
    })
}

/// The unified kernel image for slot a and every ESP file but the manifest and its signature.
pub(super) fn esp_content(
    ctx: &mut BuildContext,
    root: &Root,
    boot: &BootFiles,
    sbom_json: Vec<u8>,
) -> Result<EspPieces, BuildError> {
    let def = ctx.def;
    let slot = 'a';
    let uki_start = Instant::now();
    let entry = uki::esp_path(&def.name, &def.version, slot);
    let (cmdline, uki_bytes) = slot_uki(ctx, root, boot, slot)?;
    let sdboot_blob = match &def.secure_boot {
        None => boot.systemd_boot.clone(),
        Some(keys) => {
            let mut sdboot = Vec::new();
            Tree::read_blobs(&[(0usize, &boot.systemd_boot)], &mut |_, r| {
                r.read_to_end(&mut sdboot).map(|_| ())
            })
            .map_err(stage("esp"))?;
            Blob::bytes(
                secureboot::sign(keys, &sdboot, paths::ESP_FALLBACK_BOOT, ctx.epoch)
                    .map_err(stage("esp"))?,
            )
        }
    };
    ctx.log(&format!(
        "uki: {entry}, {} KiB, in {:.2}s",
        uki_bytes.len() / 1024,
        uki_start.elapsed().as_secs_f64()
    ));

    let mut content = esp::EspContent::new();
    content.add(paths::ESP_FALLBACK_BOOT, sdboot_blob.clone());
    content.add(paths::ESP_SYSTEMD_BOOT, sdboot_blob);
    content.add(
        paths::ESP_LOADER_CONF,
        Blob::bytes(esp::loader_conf(&def.name)),
    );
    let uki = manifest::Uki {
        path: entry.clone(),
        size: uki_bytes.len() as u64,
        sha256: sha256_hex(&uki_bytes),
        cmdline: cmdline.clone(),
    };
    content.add(entry.clone(), Blob::bytes(uki_bytes));
    content.add(sbom::ESP_PATH, Blob::bytes(sbom_json));
    let used: u64 = content.files.iter().map(|(_, b)| b.len()).sum();
    let files = file_records(&mut content.files).map_err(stage("esp"))?;
    Ok(EspPieces {
        content,
        used,
        files,
        uki,
        cmdline,
        entry,
        initrd_size: boot.initrd.bytes.len() as u64,
        initrd_sha256: sha256_hex(&boot.initrd.bytes),
    })
}

/// The command line and unified kernel image (signed when Secure Boot keys are given) of
/// `slot`. One UKI per slot: the command line (the root hash, the slot) is inside the signed
/// PE file, not in an editable loader entry.
pub(super) fn slot_uki(
    ctx: &BuildContext,
    root: &Root,
    boot: &BootFiles,
    slot: char,
) -> Result<(String, Vec<u8>), BuildError> {
    let def = ctx.def;
    let cmdline = esp::command_line(
        &root.root_hash_hex(),
        slot,
        def.fips,
        def.selinux,
        &def.cmdline,
    );
    // Checked at load for the longest root hash and slot; again for this line, which goes
    // into the UKI's `.cmdline` as the kernel will receive it.
    esp::check_length(&cmdline)
        .map_err(|m| invalid("esp", format!("{}: kernel.cmdline: {m}", ctx.file())))?;
    let entry = uki::esp_path(&def.name, &def.version, slot);
    let bytes = build_uki(ctx, boot, &cmdline, &entry, "esp")?;
    Ok((cmdline, bytes))
}

/// A unified kernel image of the boot files with `cmdline`, signed for `entry` when Secure
/// Boot keys are given.
fn build_uki(
    ctx: &BuildContext,
    boot: &BootFiles,
    cmdline: &str,
    entry: &str,
    stage_name: &'static str,
) -> Result<Vec<u8>, BuildError> {
    let bytes = uki::build(
        &boot.stub,
        &uki::Parts {
            osrel: &boot.os_release,
            cmdline,
            initrd: &boot.initrd.bytes,
            linux: &boot.kernel,
        },
        &format!("/{}", uki::STUB),
    )
    .map_err(stage(stage_name))?;
    match &ctx.def.secure_boot {
        None => Ok(bytes),
        Some(keys) => secureboot::sign(keys, &bytes, entry, ctx.epoch).map_err(stage(stage_name)),
    }
}

/// The `iso` output's live UKI: the disk UKI's command line plus `rke2.root=iso`; returns its
/// ESP path and bytes.
pub(super) fn live_uki(
    ctx: &mut BuildContext,
    boot: &BootFiles,
    disk_cmdline: &str,
) -> Result<(String, Vec<u8>), BuildError> {
    let cmdline = crate::outputs::iso::kernel_args(disk_cmdline);
    esp::check_length(&cmdline)
        .map_err(|m| invalid("iso", format!("the live UKI's kernel command line: {m}")))?;
    let entry = crate::outputs::iso::uki_path(&ctx.def.name, &ctx.def.version);
    let bytes = build_uki(ctx, boot, &cmdline, &entry, "iso")?;
    ctx.log(&format!("uki: {entry} (iso), {} KiB", bytes.len() / 1024));
    Ok((entry, bytes))
}

/// Writes the ESP's files as FAT32 into its region of the output file.
pub(super) fn write_esp(
    ctx: &BuildContext,
    content: esp::EspContent,
    seed: &[u8; 32],
    out: &File,
    region: Region,
) -> Result<(), BuildError> {
    let fat_opts = fat::Options {
        label: rke2_image_contract::partitions::ESP_FS_LABEL.into(),
        volume_id: u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]),
        mtime: ctx.epoch,
    };
    fat::write(
        &content.sorted(),
        out,
        region.offset,
        region.size,
        &fat_opts,
    )
    .map_err(stage("esp"))?;
    Ok(())
}

/// Path, size and sha256 of every ESP file so far, sorted by path (the manifest's `espFiles`).
fn file_records(files: &mut [(String, Blob)]) -> std::io::Result<Vec<manifest::EspFile>> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<manifest::EspFile> = files
        .iter()
        .map(|(p, b)| manifest::EspFile {
            path: p.clone(),
            size: b.len(),
            sha256: String::new(),
        })
        .collect();
    let wanted: Vec<(usize, &Blob)> = files.iter().enumerate().map(|(i, (_, b))| (i, b)).collect();
    Tree::read_blobs(&wanted, &mut |i, r| {
        let mut h = Sha256::new();
        std::io::copy(r, &mut h)?;
        out[i].sha256 = hex::encode(h.finalize());
        Ok(())
    })?;
    Ok(out)
}
