//! The build: named stages run in a fixed order over one [`BuildContext`]; each stage is a
//! function in its own file that reads the context and returns its piece. The pieces (root +
//! verity, kernel and boot files, initrd, UKI, ESP contents, manifest, SBOM) are then handed to
//! the emitters in [`crate::outputs`].
//!
//! | stage     | file                     | does                                                                               |
//! |-----------|--------------------------|------------------------------------------------------------------------------------|
//! | `fetch`   | `fetch.rs`               | makes sure the base exists (mmdebstrap cache), reads it as a stream; the epoch     |
//! | `compose` | `compose.rs`             | overlays, RKE2 payload, generated files, node programs; clamps timestamps          |
//! | `label`   | `label.rs`               | SELinux labels from the base's own `file_contexts`                                 |
//! | `kernel`  | `kernel.rs`              | picks the kernel, checks its configuration, finds the boot files                   |
//! | `layout`  | `layout.rs`              | plans the root filesystem, sizes every partition; refuses a tree that does not fit |
//! | `sbom`    | `sbom.rs`                | SPDX 2.3 SBOM of the root (Debian packages, RKE2, images, programs)                |
//! | `rootfs`  | `rootfs.rs`              | EROFS straight into the root-a region of the output file                           |
//! | `verity`  | `rootfs.rs`              | hash tree + superblock into root-a-verity; root hash                               |
//! | `initrd`  | `boot.rs`                | cpio (zstd) with the init and the kernel-module closure (beside rootfs)            |
//! | `esp`     | `boot.rs`, `manifest.rs` | UKI, ESP contents, manifest; FAT32 into the ESP region                             |
//! | `disk`    | `outputs/raw.rs`         | GPT + protective MBR                                                               |
//! | `qcow2`   | `outputs/qcow2.rs`       | compressed qcow2 of the finished disk (`output.formats` has `qcow2`)              |
//! | `iso`     | `outputs/iso.rs`         | `output.formats: [iso]`: hybrid ISO (El Torito + GPT ESP), root/verity as files   |
//! | `pxe`     | `outputs/pxe.rs`         | `output.formats: [pxe]`: kernel, initrd, root as a second initrd, `boot.ipxe`      |
//! | `update`  | `outputs/update.rs`      | `output.formats: [update]`: the signed A/B update bundle (root, verity, both UKIs)  |
//! | `outputs` | `outputs/raw.rs`         | fsync, rename into place, published manifest                                       |
//!
//! Everything is written into a temporary file in the output directory that is renamed to
//! `<name>-<version>.raw` only when complete; a failed build removes it, so no half image ever
//! carries the final name. Every GUID and the verity salt derive from a seed over all inputs,
//! and every timestamp is clamped to the build epoch: the same inputs give the same bytes.

mod boot;
mod compose;
mod fetch;
mod kernel;
mod label;
mod layout;
mod manifest;
mod rootfs;
mod sbom;

pub(crate) use layout::Partitions;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rke2_image_contract::manifest::{Check, Input, Manifest};
use rke2_image_contract::partitions;
use sha2::{Digest, Sha256};

use crate::definition::{Definition, OutputFormat};
use crate::tree::{self, Tree};
use crate::{esp, outputs, publish, secureboot, sign};

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = partitions::SECTOR;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("stage {stage}")]
    Stage {
        stage: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("stage {stage}: {message}")]
    Invalid {
        stage: &'static str,
        message: String,
    },
}

pub(crate) fn stage<E: Into<BoxError>>(stage: &'static str) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Stage {
        stage,
        source: e.into(),
    }
}

pub(crate) fn invalid(stage: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        stage,
        message: message.into(),
    }
}

/// The root filesystem does not fit `disk.rootSize`: names the size it needs and the fix.
fn root_too_small(stage: &'static str, def: &Definition, needed: u64) -> BuildError {
    invalid(
        stage,
        format!(
            "the root filesystem needs {} MiB but disk.rootSize is {} MiB; raise disk.rootSize in {} to at least {}MiB",
            needed.div_ceil(MIB),
            def.root_size / MIB,
            def.file.display(),
            align_up(needed + needed / 10, MIB) / MIB
        ),
    )
}

/// Settings that come from the command line and environment rather than the definition.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where built bases are cached.
    pub cache_dir: PathBuf,
    /// Overrides the definition's `output.directory`.
    pub output_dir: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`, when set; wins over the definition's `epoch`.
    pub source_date_epoch: Option<u64>,
    /// Where `rke2-init` and `rke2-firstboot` are looked for when the definition names none
    /// (normally the directory of the running `rke2-image`).
    pub programs_dir: PathBuf,
    /// Downgrades the FIPS supervisor gate (rke2 not built with BoringCrypto) to a warning.
    pub allow_non_fips_supervisor: bool,
}

#[derive(Debug)]
pub struct BuildResult {
    /// Final path of the raw image (published only when `raw` is selected).
    pub image: PathBuf,
    /// Every output published, in `output.formats` order (the manifest and SBOM aside).
    pub published: Vec<PathBuf>,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub timings: Vec<(&'static str, Duration)>,
}

/// What every stage reads and what the early stages accumulate: the definition and options,
/// the epoch and tree (set by `fetch`, changed by `compose` and `label` only), the manifest's
/// inputs and checks, and the build log.
pub struct BuildContext<'a> {
    pub def: &'a Definition,
    pub opts: &'a BuildOptions,
    /// Every timestamp is clamped to this; set by `fetch` (it may come from the base).
    pub epoch: u64,
    pub tree: Tree,
    /// The manifest's inputs, in the order they were read (the seed hashes them).
    pub inputs: Vec<Input>,
    /// The manifest's checks (RKE2 payload gates, kernel configuration).
    pub checks: Vec<Check>,
    /// `signing.key`, loaded once before any stage: it signs the manifest and the update
    /// bundle, and its public half is baked into the root (`compose`).
    pub signing_key: Option<&'a ed25519_dalek::SigningKey>,
    log: &'a mut dyn FnMut(&str),
}

impl BuildContext<'_> {
    pub fn log(&mut self, line: &str) {
        (self.log)(line)
    }

    /// Records a manifest input (see [`input`]).
    fn add_input(&mut self, kind: &str, host: &Path, sha256: String, size: u64) {
        let i = input(kind, host, sha256, size, &mut *self.log);
        self.inputs.push(i);
    }

    /// The definition's file, for messages about it.
    fn file(&self) -> std::path::Display<'_> {
        self.def.file.display()
    }

    /// The build seed: every GUID and the salt derive from the content of all inputs (not
    /// where they were on the build host) and the epoch, so the same inputs give the same disk.
    fn seed(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for i in &self.inputs {
            h.update(format!("{}\0{}\n", i.kind, i.sha256).as_bytes());
        }
        h.update(self.epoch.to_le_bytes());
        h.finalize().into()
    }
}

/// The bytes of the ESP file at `path`.
fn esp_bytes(content: &esp::EspContent, path: &str) -> Result<Vec<u8>, BuildError> {
    let blob = content
        .files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, b)| b)
        .ok_or_else(|| invalid("update", format!("the ESP has no {path}")))?;
    let mut out = Vec::new();
    Tree::read_blobs(&[(0usize, blob)], &mut |_, r| {
        r.read_to_end(&mut out).map(|_| ())
    })
    .map_err(stage("update"))?;
    Ok(out)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// Derives 16 deterministic bytes for `purpose` from the build seed.
fn derive16(seed: &[u8; 32], purpose: &str) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(seed)
        .chain_update(purpose.as_bytes())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// A manifest input named by its file (or overlay directory) name, never its host path: the
/// manifest goes into the image, which must not depend on where the inputs were. The host path
/// goes to the build log only.
fn input(kind: &str, host: &Path, sha256: String, size: u64, log: &mut dyn FnMut(&str)) -> Input {
    log(&format!("input: {kind} {}", host.display()));
    Input {
        kind: kind.into(),
        // `dir/..`-style paths have no file name of their own: use the resolved one.
        name: host
            .file_name()
            .map(PathBuf::from)
            .or_else(|| {
                std::fs::canonicalize(host)
                    .ok()?
                    .file_name()
                    .map(PathBuf::from)
            })
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256,
    }
}

/// Runs every stage. `log` receives one line per stage.
pub fn build(
    def: &Definition,
    opts: &BuildOptions,
    log: &mut dyn FnMut(&str),
) -> Result<BuildResult, BuildError> {
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, Duration)>| {
        let now = Instant::now();
        timings.push((name, now - clock));
        clock = now;
    };

    // Checked at load already; again here for a `Definition` built in code.
    for (i, c) in def.cmdline.iter().enumerate() {
        esp::check_item(c).map_err(|m| {
            invalid(
                "load",
                format!("{}: kernel.cmdline[{i}]: {m}", def.file.display()),
            )
        })?;
    }
    // Likewise the output selection (`build --format` replaces it after the load).
    if def.output.formats.is_empty() {
        return Err(invalid(
            "load",
            format!(
                "{}: output.formats: is empty; list at least one of {}",
                def.file.display(),
                OutputFormat::ACCEPTED
            ),
        ));
    }
    // `build --format update` bypasses the load's check.
    if def.output.formats.contains(&OutputFormat::Update) && def.signing.is_none() {
        return Err(invalid(
            "load",
            format!(
                "{}: signing.key: {}",
                def.file.display(),
                crate::definition::update_needs_key()
            ),
        ));
    }
    // Signing keys are checked before anything is written.
    if let Some(keys) = &def.secure_boot {
        secureboot::check(keys)
            .map_err(|e| invalid("load", format!("{}: {e}", def.file.display())))?;
    }
    let manifest_key = def
        .signing
        .as_deref()
        .map(|k| sign::load_private(k, "signing.key"))
        .transpose()
        .map_err(|e| invalid("load", format!("{}: {e}", def.file.display())))?;
    let mut ctx = BuildContext {
        def,
        opts,
        epoch: 0,
        tree: Tree::new(0),
        inputs: Vec::new(),
        checks: Vec::new(),
        signing_key: manifest_key.as_ref(),
        log,
    };
    ctx.add_input(
        "definition",
        &def.file,
        def.source_sha256.clone(),
        def.source_len,
    );
    // The output lock is taken before any work, so a concurrent build of the same output is
    // refused at once; the image temporary exists from here on and is removed on failure.
    // It stays out of the context: the stages below borrow its file while others read the
    // context.
    let out_dir = opts
        .output_dir
        .clone()
        .unwrap_or_else(|| def.output_dir.clone());
    let mut staged = publish::Outputs::begin(&out_dir, &format!("{}-{}", def.name, def.version))
        .map_err(stage("outputs"))?;
    staged.keep_image(def.output.formats.contains(&OutputFormat::Raw));

    fetch::run(&mut ctx)?;
    lap("fetch", &mut timings);
    let composed = compose::run(&mut ctx)?;
    lap("compose", &mut timings);
    label::run(&mut ctx)?;
    lap("label", &mut timings);
    let kernel = kernel::run(&mut ctx)?;
    lap("kernel", &mut timings);
    let seed = ctx.seed();
    let layout = layout::run(&ctx, &seed)?;
    lap("layout", &mut timings);
    let sbom_json = sbom::run(&mut ctx, &mut staged)?;
    lap("sbom", &mut timings);

    // The output file is sized here, once the layout is known; from here on the stages write
    // into its regions.
    let out = staged.file();
    out.set_len(layout.disk_size).map_err(|e| {
        invalid(
            "outputs",
            format!(
                "{}: cannot size the image to {} bytes: {}",
                staged.temp_path().display(),
                layout.disk_size,
                crate::limits::io_reason(&e)
            ),
        )
    })?;

    // The initrd (and the boot files the ESP needs from the base) depend only on the tree, so
    // they are prepared on the second core while the root filesystem and its hash tree are
    // written.
    let (root, boot_files) = std::thread::scope(|scope| {
        let side = scope.spawn(|| boot::initrd(&ctx.tree, ctx.def, ctx.epoch, &composed, &kernel));
        let main = rootfs::run(&ctx.tree, ctx.def, &layout, &seed, out);
        let side = side
            .join()
            .map_err(|_| invalid("initrd", "the initrd thread panicked"))?;
        Ok::<_, BuildError>((main?, side?))
    })?;
    ctx.log(&format!(
        "rootfs: EROFS {} MiB, {} inodes",
        root.written.size.div_ceil(MIB),
        root.written.inodes
    ));
    ctx.log(&format!("verity: root hash {}", root.root_hash_hex()));
    lap("rootfs+verity", &mut timings);
    ctx.log(&format!(
        "initrd: {} modules, {} KiB (zstd), built alongside in {:.1}s",
        boot_files.initrd.modules.len(),
        boot_files.initrd.bytes.len() / 1024,
        boot_files.time.as_secs_f64()
    ));

    let mut esp = boot::esp_content(&mut ctx, &root, &boot_files, sbom_json)?;
    // The ISO's live UKI: the same boot files, its own command line.
    let live_uki = if def.output.formats.contains(&OutputFormat::Iso) {
        Some(boot::live_uki(&mut ctx, &boot_files, &esp.cmdline)?)
    } else {
        None
    };
    // The update bundle's slot b UKI: the same boot files, its own (signed) command line.
    let uki_b = if def.output.formats.contains(&OutputFormat::Update) {
        Some(boot::slot_uki(&ctx, &root, &boot_files, 'b')?)
    } else {
        None
    };
    let partitions = layout.partitions(&seed, &root, esp.used);
    let pieces = manifest::Pieces {
        layout: &layout,
        partitions: &partitions,
        root: &root,
        kernel: &kernel,
        composed: &composed,
    };
    let manifest = manifest::run(&ctx, &pieces, &mut esp, manifest_key.as_ref())?;
    // The ISO takes its ESP files and the embedded manifest from the disk ESP's content.
    let iso_files = match live_uki {
        Some((path, bytes)) => {
            let entry = outputs::iso::install_entry(
                &def.name,
                &def.version,
                &path,
                &outputs::iso::kernel_args(&esp.cmdline),
            );
            let esp_files = outputs::iso::esp_files(&esp.content, &path, bytes, entry)?;
            let extra: Vec<(String, tree::Blob)> = esp
                .content
                .files
                .iter()
                .filter_map(|(p, b)| {
                    use rke2_image_contract::{cmdline::ISO_MANIFEST_FILE, paths};
                    let on_iso = match p.as_str() {
                        paths::ESP_MANIFEST => ISO_MANIFEST_FILE.to_string(),
                        paths::ESP_SIGNATURE => format!("{ISO_MANIFEST_FILE}.sig"),
                        _ => return None,
                    };
                    Some((on_iso, b.clone()))
                })
                .collect();
            Some((esp_files, extra))
        }
        None => None,
    };
    // The bundle takes the embedded manifest and slot a's UKI from the ESP's content.
    let update_files = match uki_b {
        Some(b) => Some((
            esp_bytes(&esp.content, rke2_image_contract::paths::ESP_MANIFEST)?,
            esp_bytes(&esp.content, &esp.entry)?,
            b,
        )),
        None => None,
    };
    boot::write_esp(&ctx, esp.content, &seed, out, layout.esp)?;
    lap("esp", &mut timings);

    outputs::raw::write_table(out, &partitions, layout.disk_size)?;
    lap("disk", &mut timings);
    let mut published = Vec::new();
    if staged.image_kept() {
        published.push(staged.image_path().to_path_buf());
    }
    if def.output.formats.contains(&OutputFormat::Qcow2) {
        let q = outputs::qcow2::emit(&mut staged)?;
        lap("qcow2", &mut timings);
        published.push(q);
    }
    if let Some((esp_files, extra)) = iso_files {
        let raw = staged.temp_path().to_path_buf();
        let esp_used = File::open(&raw)
            .and_then(|f| outputs::iso::used_len(&f, layout.esp.offset, layout.esp.size))
            .map_err(stage("iso"))?;
        let q = outputs::iso::emit(
            &mut staged,
            &outputs::iso::Pieces {
                raw: &raw,
                root: (layout.root_a.offset, root.written.size),
                verity: (
                    layout.verity_a.offset,
                    outputs::pxe::verity_len(&root.params),
                ),
                head: layout.esp.offset,
                disk_esp: (layout.esp.offset, esp_used),
                esp: esp_files,
                extra,
                name: &def.name,
                epoch: ctx.epoch,
                esp_volume_id: {
                    let d = derive16(&seed, "iso-esp");
                    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
                },
                gpt_guid: derive16(&seed, "iso-gpt"),
            },
        )?;
        lap("iso", &mut timings);
        published.push(q);
    }
    if def.output.formats.contains(&OutputFormat::Pxe) {
        let dir = staged.add_dir(outputs::pxe::SUFFIX).map_err(stage("pxe"))?;
        outputs::pxe::emit(
            &dir,
            &outputs::pxe::Pieces {
                kernel: &boot_files.kernel,
                initrd: &boot_files.initrd.bytes,
                cmdline: &esp.cmdline,
                image: staged.file(),
                root: (layout.root_a.offset, root.written.size),
                verity: (
                    layout.verity_a.offset,
                    outputs::pxe::verity_len(&root.params),
                ),
                mtime: ctx.epoch,
            },
        )?;
        lap("pxe", &mut timings);
        published.push(staged.final_path(outputs::pxe::SUFFIX));
    }
    if let (Some((manifest_bytes, uki_a, (cmdline_b, uki_b))), Some(key)) =
        (&update_files, manifest_key.as_ref())
    {
        // Its own handle: the emitter stages a file while it reads the raw temporary.
        let raw = File::open(staged.temp_path()).map_err(stage("update"))?;
        let q = outputs::update::emit(
            &mut staged,
            &outputs::update::Pieces {
                raw: &raw,
                name: &def.name,
                version: &def.version,
                epoch: ctx.epoch,
                root_hash: &root.root_hash_hex(),
                manifest: manifest_bytes,
                uki_a: (&esp.cmdline, uki_a),
                uki_b: (cmdline_b, uki_b),
                verity: (
                    layout.verity_a.offset,
                    outputs::pxe::verity_len(&root.params),
                ),
                root: (layout.root_a.offset, root.written.size),
                key,
            },
        )?;
        lap("update", &mut timings);
        published.push(q);
    }
    let (image, manifest_path) =
        outputs::raw::publish(staged, &manifest, manifest_key.as_ref(), &mut |l| {
            ctx.log(l)
        })?;
    lap("outputs", &mut timings);
    for p in &published {
        // A directory output (pxe) is as large as its files, not its directory entry.
        let size = match std::fs::read_dir(p) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum(),
            Err(_) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        };
        ctx.log(&format!(
            "outputs: {} ({} MiB)",
            p.display(),
            size.div_ceil(MIB)
        ));
    }
    ctx.log(&format!(
        "outputs: {} (disk {} MiB)",
        manifest_path.display(),
        layout.disk_size / MIB
    ));
    Ok(BuildResult {
        image,
        published,
        manifest_path,
        manifest,
        timings,
    })
}

pub use crate::publish::write_atomic;
