//! The build: named stages run in a fixed order over one [`Build`] context.
//!
//! | stage     | does                                                                   |
//! |-----------|------------------------------------------------------------------------|
//! | `fetch`   | makes sure the base exists (mmdebstrap cache) and reads it as a stream  |
//! | `compose` | overlays, generated files, node programs; clamps timestamps            |
//! | `label`   | SELinux labels from the base's own `file_contexts`                     |
//! | `kernel`  | picks the kernel, checks its configuration                             |
//! | `layout`  | sizes every partition; refuses a tree that does not fit                |
//! | `sbom`    | SPDX 2.3 SBOM of the root (Debian packages, RKE2, images, programs)    |
//! | `rootfs`  | EROFS written straight into the root-a region of the output file       |
//! | `verity`  | hash tree + superblock into root-a-verity; root hash                   |
//! | `initrd`  | cpio (zstd) with the init and the kernel-module closure                |
//! | `esp`     | FAT32 with systemd-boot, kernel, initrd, loader entry, manifest, SBOM  |
//! | `disk`    | GPT + protective MBR                                                    |
//! | `outputs` | fsync, rename into place, manifest.json                                 |
//!
//! Everything is written into a temporary file in the output directory that is renamed to
//! `<name>-<version>.raw` only when complete; a failed build removes it, so no half image ever
//! carries the final name. Every GUID and the verity salt derive from a seed over all inputs,
//! and every timestamp is clamped to the build epoch: the same inputs give the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rke2_image_contract::gpt::{Entry, Guid, Table};
use rke2_image_contract::manifest::{self, Manifest};
use rke2_image_contract::{partitions, paths, verity};
use sha2::{Digest, Sha256};

use crate::definition::{BaseSource, Definition, SelinuxMode};
use crate::tree::{Blob, Inode, Kind, Tree};
use crate::{
    archive, base, compose, erofs, esp, fat, initrd, kernel_check, payload, publish, sbom,
    secureboot, selinux, sign, uki,
};

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

fn stage<E: Into<BoxError>>(stage: &'static str) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Stage {
        stage,
        source: e.into(),
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

fn invalid(stage: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        stage,
        message: message.into(),
    }
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
    pub image: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub timings: Vec<(&'static str, Duration)>,
}

/// One partition region of the output file.
#[derive(Debug, Clone, Copy)]
struct Region {
    offset: u64,
    size: u64,
}

impl Region {
    fn first_lba(&self) -> u64 {
        self.offset / SECTOR
    }
    fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR - 1
    }
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
fn input(
    kind: &str,
    host: &Path,
    sha256: String,
    size: u64,
    log: &mut dyn FnMut(&str),
) -> manifest::Input {
    log(&format!("input: {kind} {}", host.display()));
    manifest::Input {
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

/// Path relative to the definition's directory when it is below it, for stable manifests.
fn display_path(def: &Definition, p: &Path) -> String {
    let dir = def.file.parent().unwrap_or(Path::new(""));
    p.strip_prefix(dir).unwrap_or(p).display().to_string()
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
    let mut inputs: Vec<manifest::Input> = Vec::new();

    // Checked at load already; again here for a `Definition` built in code.
    for (i, c) in def.cmdline.iter().enumerate() {
        esp::check_item(c).map_err(|m| {
            invalid(
                "load",
                format!("{}: kernel.cmdline[{i}]: {m}", def.file.display()),
            )
        })?;
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
    inputs.push(input(
        "definition",
        &def.file,
        def.source_sha256.clone(),
        def.source_len,
        log,
    ));
    // The output lock is taken before any work, so a concurrent build of the same output is
    // refused at once; the image temporary exists from here on and is removed on failure.
    let out_dir = opts
        .output_dir
        .clone()
        .unwrap_or_else(|| def.output_dir.clone());
    let mut outputs = publish::Outputs::begin(&out_dir, &format!("{}-{}", def.name, def.version))
        .map_err(stage("outputs"))?;

    // --- fetch -------------------------------------------------------------------------
    let base_path = match &def.base {
        BaseSource::Archive(p) => p.clone(),
        BaseSource::Debian {
            suite,
            mirror,
            packages,
        } => {
            // The base has its own fixed epoch so `rke2-image base` and every build share one cached
            // base; the image's own epoch clamps timestamps later anyway.
            let mut req = base::BaseRequest::debian_default(base::DEFAULT_EPOCH);
            req.suite = suite.clone();
            req.mirror = mirror.clone();
            req.packages.extend(packages.iter().cloned());
            log(&format!(
                "fetch: base {} ({} packages), cache {}",
                req.suite,
                req.packages.len(),
                opts.cache_dir.display()
            ));
            let r = base::ensure(&req, &opts.cache_dir).map_err(stage("fetch"))?;
            log(&format!(
                "fetch: base {} {}",
                if r.reused { "reused" } else { "built" },
                r.path.display()
            ));
            r.path
        }
    };
    let mut tree = Tree::new(0);
    let stats = archive::load(&base_path, &mut tree).map_err(stage("fetch"))?;
    log(&format!(
        "fetch: {} entries, {} MiB of file data",
        stats.entries,
        stats.content_bytes / MIB
    ));
    inputs.push(input(
        "base",
        &base_path,
        stats.sha256.clone(),
        stats.size,
        log,
    ));
    // Without an explicit epoch the newest timestamp in the base is used: still a function of
    // the inputs only.
    let epoch = opts.source_date_epoch.or(def.epoch).unwrap_or_else(|| {
        tree.iter()
            .map(|(_, id)| tree.inode(id).mtime)
            .max()
            .unwrap_or(0)
    });
    if epoch > crate::definition::EPOCH_MAX {
        let newest = tree
            .iter()
            .max_by_key(|(_, id)| tree.inode(*id).mtime)
            .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        return Err(invalid(
            "fetch",
            format!(
                "the base's newest entry /{newest} is dated {epoch}, after 2106-02-07, the latest time the initrd and ESP can store; set `epoch:` in {} (or SOURCE_DATE_EPOCH) to clamp timestamps",
                def.file.display()
            ),
        ));
    }
    lap("fetch", &mut timings);

    // --- compose -------------------------------------------------------------------------
    for o in &def.overlays {
        let spec = compose::Overlay {
            source: o.source.clone(),
            target: o.target.clone(),
            uid: o.uid,
            gid: o.gid,
            modes: o.modes.clone(),
        };
        let s = compose::add_overlay(&mut tree, &spec, epoch).map_err(stage("compose"))?;
        log(&format!(
            "compose: overlay {} ({} files)",
            display_path(def, &o.source),
            s.files
        ));
        inputs.push(input("overlay", &o.source, s.sha256, s.bytes, log));
    }
    let init_path = match &def.init {
        Some(p) => p.clone(),
        None => opts.programs_dir.join("rke2-init"),
    };
    if !init_path.is_file() {
        return Err(invalid(
            "compose",
            format!(
                "init program {} not found: build it with `cargo build --release -p rke2-firstboot --bin rke2-init` or set `initrd.init` in {}",
                init_path.display(),
                def.file.display()
            ),
        ));
    }
    let (init_sha, init_len) = file_sha256(&init_path).map_err(stage("compose"))?;
    inputs.push(input("init", &init_path, init_sha, init_len, log));
    let agent_path = opts.programs_dir.join("rke2-firstboot");
    if agent_path.is_file() {
        let (sha, len) = file_sha256(&agent_path).map_err(stage("compose"))?;
        let inode = Inode::new(
            Kind::File(Blob::HostFile {
                path: agent_path.clone(),
                len,
            }),
            0o755,
            0,
            0,
            epoch,
        );
        tree.insert_resolved(b"usr/bin/rke2-firstboot", inode)
            .map_err(stage("compose"))?;
        inputs.push(input("node-agent", &agent_path, sha, len, log));
    } else {
        log(&format!(
            "compose: warning: {} not found; the image has no first-boot agent",
            agent_path.display()
        ));
    }
    let mut checks: Vec<manifest::Check> = Vec::new();
    let mut rke2_info = None;
    if let Some(spec) = &def.rke2 {
        let popts = payload::Options {
            fips: def.fips,
            cis: def.cis,
            selinux: def.selinux != SelinuxMode::Disabled,
            allow_non_fips_supervisor: opts.allow_non_fips_supervisor,
            epoch,
        };
        let report = payload::apply(&mut tree, spec, &popts, &mut |l| {
            log(&format!("compose: rke2: {l}"))
        })
        .map_err(stage("compose"))?;
        log(&format!(
            "compose: rke2 {} with {} preloaded images",
            report.version,
            report.images.len()
        ));
        inputs.extend(report.inputs.iter().cloned());
        checks.extend(report.checks.iter().cloned());
        rke2_info = Some(manifest::Rke2 {
            version: report.version.clone(),
            origin: spec.origin.clone(),
            images: report.images.clone(),
        });
    }
    let identity = compose::Identity {
        name: def.name.clone(),
        version: def.version.clone(),
        pretty_name: def.description.clone(),
    };
    for note in compose::add_generated(&mut tree, &identity, epoch).map_err(stage("compose"))? {
        log(&format!("compose: {note}"));
    }
    set_selinux_config(&mut tree, def.selinux, epoch).map_err(stage("compose"))?;
    tree.clamp_mtimes(epoch);
    lap("compose", &mut timings);

    // --- label ---------------------------------------------------------------------------
    if def.selinux != SelinuxMode::Disabled {
        let fc = selinux::FileContexts::from_tree(&tree).map_err(stage("label"))?.ok_or_else(|| {
            invalid(
                "label",
                format!(
                    "security.selinux is {:?} but the base has no SELinux policy (etc/selinux/config and file_contexts); add selinux-policy-default to the base or set `security.selinux: disabled` in {}",
                    def.selinux,
                    def.file.display()
                ),
            )
        })?;
        add_state_labels(&mut tree, &fc, epoch).map_err(stage("label"))?;
        let s = selinux::label_tree(&mut tree, &fc);
        log(&format!(
            "label: {} inodes labelled from the {} policy, {} left unlabelled (<<none>>)",
            s.labelled,
            fc.policy_type(),
            s.unlabelled
        ));
    } else {
        // A base archive may carry labels; an image without SELinux must not pretend to have them.
        tree.for_each_inode_mut(|_, i| {
            i.xattrs.remove(&b"security.selinux"[..]);
        });
    }
    lap("label", &mut timings);

    // --- kernel --------------------------------------------------------------------------
    let kernels = initrd::kernel_versions(&tree);
    let kver = match (&def.kernel_version, kernels.as_slice()) {
        (Some(v), _) if kernels.contains(v) => v.clone(),
        (Some(v), _) => {
            return Err(invalid(
                "kernel",
                format!(
                    "kernel.version {v:?} is not in the base (it has: {})",
                    kernels.join(", ")
                ),
            ))
        }
        (None, [one]) => one.clone(),
        (None, []) => return Err(invalid(
            "kernel",
            "the base has no kernel (usr/lib/modules/<version>/modules.dep); add linux-image-amd64",
        )),
        (None, many) => {
            return Err(invalid(
                "kernel",
                format!(
                    "the base has several kernels ({}); choose one with kernel.version",
                    many.join(", ")
                ),
            ))
        }
    };
    let vmlinuz_path = format!("boot/vmlinuz-{kver}");
    let kernel_blob = file_blob(&tree, &vmlinuz_path).ok_or_else(|| {
        invalid(
            "kernel",
            format!("/{vmlinuz_path} is missing from the base"),
        )
    })?;
    let sdboot_blob = file_blob(&tree, paths::SYSTEMD_BOOT_EFI).ok_or_else(|| {
        invalid(
            "kernel",
            format!(
                "/{} is missing: add systemd-boot-efi to the base",
                paths::SYSTEMD_BOOT_EFI
            ),
        )
    })?;
    let stub_blob = file_blob(&tree, uki::STUB).ok_or_else(|| {
        invalid(
            "kernel",
            format!(
                "/{} is missing: add systemd-boot-efi to the base (the unified kernel image is built from its stub)",
                uki::STUB
            ),
        )
    })?;
    let (osrel_path, osrel_blob) = ["etc/os-release", "usr/lib/os-release"]
        .into_iter()
        .find_map(|p| file_blob(&tree, p).map(|b| (p, b)))
        .ok_or_else(|| {
            invalid(
                "kernel",
                "the tree has no /etc/os-release for the unified kernel image's .osrel",
            )
        })?;
    for (path, blob, limit) in [
        (
            vmlinuz_path.as_str(),
            &kernel_blob,
            (crate::limits::KERNEL, "a kernel"),
        ),
        (
            paths::SYSTEMD_BOOT_EFI,
            &sdboot_blob,
            (crate::limits::SYSTEMD_BOOT, "a boot loader"),
        ),
        (
            uki::STUB,
            &stub_blob,
            (crate::limits::EFI_STUB, "an EFI stub"),
        ),
        (
            osrel_path,
            &osrel_blob,
            (crate::limits::OS_RELEASE, "os-release"),
        ),
    ] {
        crate::limits::check_with(path.as_bytes(), blob.len(), limit).map_err(stage("kernel"))?;
    }
    let config_path = format!("boot/config-{kver}");
    let config = tree
        .read_file(config_path.as_bytes())
        .map_err(|e| invalid("kernel", format!("/{config_path}: {e}; the kernel configuration is needed to check the options the image relies on")))?;
    let fragments = kernel_check::builtin_fragments().map_err(stage("kernel"))?;
    let kreport = kernel_check::check(&String::from_utf8_lossy(&config), &fragments);
    if !kreport.is_ok() {
        return Err(invalid(
            "kernel",
            format!("kernel {kver} lacks options the image needs:\n{kreport}"),
        ));
    }
    let warned = kreport.warnings().len();
    checks.push(manifest::Check {
        name: "kernel-config".into(),
        result: if warned == 0 { "passed" } else { "warned" }.into(),
        detail: format!(
            "{kver}: {} options checked, {warned} optional missing",
            kreport.findings.len()
        ),
    });
    log(&format!(
        "kernel: {kver}, configuration has every required option ({warned} optional missing)"
    ));
    lap("kernel", &mut timings);

    // --- seed ----------------------------------------------------------------------------
    // Every GUID and the salt derive from the content of all inputs (not where they were on
    // the build host), so the same inputs give the same disk.
    let mut seed_hasher = Sha256::new();
    for i in &inputs {
        seed_hasher.update(format!("{}\0{}\n", i.kind, i.sha256).as_bytes());
    }
    seed_hasher.update(epoch.to_le_bytes());
    let seed: [u8; 32] = seed_hasher.finalize().into();

    // --- layout --------------------------------------------------------------------------
    let erofs_opts = erofs::Options {
        uuid: derive16(&seed, "erofs-uuid"),
        volume_name: "rke2-root".into(),
        build_time: epoch,
    };
    let plan =
        erofs::plan_compressed(&tree, &erofs_opts, def.compression).map_err(stage("layout"))?;
    // A compressed root's size is known once it is written (the rootfs stage names it then).
    if def.compression == erofs::Compression::None && plan.size() > def.root_size {
        return Err(root_too_small("layout", def, plan.size()));
    }
    // Load checked the sum for the same sizes; a `Definition` built in code is checked here,
    // before the additions below.
    if crate::definition::disk_size(def.esp_size, def.root_size, def.state_size).is_none() {
        return Err(invalid(
            "layout",
            "the partition sizes add up to more than a disk image can hold; lower disk.rootSize or disk.stateSize",
        ));
    }
    let slot_blocks = def.root_size / partitions::BLOCK;
    let hash_size = align_up(
        verity::hash_device_size(slot_blocks, partitions::BLOCK as u32),
        MIB,
    );
    let mut cursor = MIB;
    let mut next = |size: u64| {
        let r = Region {
            offset: cursor,
            size,
        };
        cursor += size;
        r
    };
    let esp_r = next(def.esp_size);
    let root_a = next(def.root_size);
    let verity_a = next(hash_size);
    let root_b = next(def.root_size);
    let verity_b = next(hash_size);
    // Free space for the state partition rke2-init creates on first boot, then 1 MiB for the
    // backup GPT (keeping the end aligned). Zeros: sparse in the file.
    let disk_size = cursor + def.state_size + MIB;
    debug_assert_eq!(
        Some(disk_size),
        crate::definition::disk_size(def.esp_size, def.root_size, def.state_size)
    );
    lap("layout", &mut timings);

    // --- sbom ----------------------------------------------------------------------------
    let sbom_json = build_sbom(&tree, def, epoch, &inputs, &mut outputs, log)?;
    lap("sbom", &mut timings);

    // --- output file ---------------------------------------------------------------------
    let out = outputs.file();
    out.set_len(disk_size).map_err(|e| {
        invalid(
            "outputs",
            format!(
                "{}: cannot size the image to {disk_size} bytes: {}",
                outputs.temp_path().display(),
                crate::limits::io_reason(&e)
            ),
        )
    })?;

    // --- rootfs, verity | initrd ----------------------------------------------------------
    // The initrd (and the boot files the ESP needs from the base) depend only on the tree, so
    // they are prepared on the second core while the root filesystem and its hash tree are
    // written.
    let init_blob = Blob::HostFile {
        path: init_path.clone(),
        len: init_len,
    };
    let mut modules: Vec<&str> = initrd::BOOT_MODULES.to_vec();
    modules.extend(def.extra_modules.iter().map(String::as_str));
    let salt = Sha256::new()
        .chain_update(seed)
        .chain_update(b"verity-salt")
        .finalize()
        .to_vec();
    let (written, params, root_hash, side) = std::thread::scope(|scope| {
        let side = scope.spawn(|| -> Result<SideOutput, BuildError> {
            let start = Instant::now();
            let rd = initrd::build(
                &tree,
                &initrd::Spec {
                    init: &init_blob,
                    kver: &kver,
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
                    (0usize, &kernel_blob),
                    (1, &sdboot_blob),
                    (2, &stub_blob),
                    (3, &osrel_blob),
                ],
                &mut |i, r| r.read_to_end(&mut boot_files[i]).map(|_| ()),
            )
            .map_err(stage("initrd"))?;
            let [kernel, sdboot, stub, osrel] = boot_files;
            Ok((
                rd,
                Blob::bytes(sdboot),
                [kernel, stub, osrel],
                start.elapsed(),
            ))
        });
        let main = (|| -> Result<_, BuildError> {
            let written = erofs::write(&tree, &plan, out, root_a.offset, root_a.size).map_err(
                |e| match e {
                    erofs::ErofsError::TooLarge { needed, .. } => {
                        root_too_small("rootfs", def, needed)
                    }
                    e => stage("rootfs")(e),
                },
            )?;
            let params = verity::Params {
                data_block_size: partitions::BLOCK as u32,
                hash_block_size: partitions::BLOCK as u32,
                data_blocks: written.size / partitions::BLOCK,
                salt,
                uuid: derive16(&seed, "verity-uuid"),
                algorithm: "sha256".into(),
            };
            let root_hash = verity::format(out, root_a.offset, out, verity_a.offset, &params)
                .map_err(stage("verity"))?;
            Ok((written, params, root_hash))
        })();
        let side = side
            .join()
            .map_err(|_| invalid("initrd", "the initrd thread panicked"))?;
        let (written, params, root_hash) = main?;
        Ok::<_, BuildError>((written, params, root_hash, side?))
    })?;
    let (rd, sdboot_blob, [kernel, stub, osrel], initrd_time) = side;
    let root_hash_hex = hex::encode(root_hash);
    log(&format!(
        "rootfs: EROFS {} MiB, {} inodes",
        written.size.div_ceil(MIB),
        written.inodes
    ));
    log(&format!("verity: root hash {root_hash_hex}"));
    lap("rootfs+verity", &mut timings);
    let initrd_sha = sha256_hex(&rd.bytes);
    log(&format!(
        "initrd: {} modules, {} KiB (zstd), built alongside in {:.1}s",
        rd.modules.len(),
        rd.bytes.len() / 1024,
        initrd_time.as_secs_f64()
    ));

    // --- esp + manifest ------------------------------------------------------------------
    let slot = 'a';
    let cmdline = esp::command_line(&root_hash_hex, slot, def.fips, def.selinux, &def.cmdline);
    // Checked at load for the longest root hash and slot; again for this line, which goes
    // into the UKI's `.cmdline` as the kernel will receive it.
    esp::check_length(&cmdline).map_err(|m| {
        invalid(
            "esp",
            format!("{}: kernel.cmdline: {m}", def.file.display()),
        )
    })?;
    let uki_start = Instant::now();
    // One unified kernel image per slot: the command line (and the root hash in it) is inside
    // the signed PE file, not in an editable loader entry.
    let entry_name = uki::esp_path(&def.name, &def.version, slot);
    let uki_bytes = uki::build(
        &stub,
        &uki::Parts {
            osrel: &osrel,
            cmdline: &cmdline,
            initrd: &rd.bytes,
            linux: &kernel,
        },
        &format!("/{}", uki::STUB),
    )
    .map_err(stage("esp"))?;
    let (uki_bytes, sdboot_blob) = match &def.secure_boot {
        None => (uki_bytes, sdboot_blob),
        Some(keys) => {
            let mut sdboot = Vec::new();
            Tree::read_blobs(&[(0usize, &sdboot_blob)], &mut |_, r| {
                r.read_to_end(&mut sdboot).map(|_| ())
            })
            .map_err(stage("esp"))?;
            (
                secureboot::sign(keys, &uki_bytes, &entry_name, epoch).map_err(stage("esp"))?,
                Blob::bytes(
                    secureboot::sign(keys, &sdboot, paths::ESP_FALLBACK_BOOT, epoch)
                        .map_err(stage("esp"))?,
                ),
            )
        }
    };
    log(&format!(
        "uki: {entry_name}, {} KiB, in {:.2}s",
        uki_bytes.len() / 1024,
        uki_start.elapsed().as_secs_f64()
    ));

    let disk_guid = Guid::from_hash(derive16(&seed, "disk-guid"));
    let mut rh_first = [0u8; 16];
    rh_first.copy_from_slice(&root_hash[..16]);
    let mut rh_last = [0u8; 16];
    rh_last.copy_from_slice(&root_hash[16..]);
    // systemd's convention: the root partition's UUID is the first half of the root hash, the
    // verity partition's the second half.
    let guids: [(partitions::PartitionSpec, Region, Guid, u64); 5] = [
        (
            partitions::ESP,
            esp_r,
            Guid::from_hash(derive16(&seed, "esp")),
            0,
        ),
        (
            partitions::ROOT_A,
            root_a,
            Guid::from_hash(rh_first),
            written.size,
        ),
        (
            partitions::ROOT_A_VERITY,
            verity_a,
            Guid::from_hash(rh_last),
            verity::hash_device_size(params.data_blocks, params.hash_block_size),
        ),
        (
            partitions::ROOT_B,
            root_b,
            Guid::from_hash(derive16(&seed, "root-b")),
            0,
        ),
        (
            partitions::ROOT_B_VERITY,
            verity_b,
            Guid::from_hash(derive16(&seed, "root-b-verity")),
            0,
        ),
    ];
    let mut esp_content = esp::EspContent::new();
    esp_content.add(paths::ESP_FALLBACK_BOOT, sdboot_blob.clone());
    esp_content.add(paths::ESP_SYSTEMD_BOOT, sdboot_blob);
    esp_content.add(
        paths::ESP_LOADER_CONF,
        Blob::bytes(esp::loader_conf(&def.name)),
    );
    let uki_record = manifest::Uki {
        path: entry_name.clone(),
        size: uki_bytes.len() as u64,
        sha256: sha256_hex(&uki_bytes),
        cmdline: cmdline.clone(),
    };
    esp_content.add(entry_name.clone(), Blob::bytes(uki_bytes));
    esp_content.add(sbom::ESP_PATH, Blob::bytes(sbom_json));
    let esp_used: u64 = esp_content.files.iter().map(|(_, b)| b.len()).sum();
    let esp_files = esp_file_records(&mut esp_content.files).map_err(stage("esp"))?;

    let manifest = Manifest {
        schema: manifest::SCHEMA.into(),
        tool: manifest::Tool {
            name: "rke2-image".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        image: manifest::ImageInfo {
            name: def.name.clone(),
            version: def.version.clone(),
            epoch,
            file: format!("{}-{}.raw", def.name, def.version),
            size: disk_size,
        },
        inputs: inputs.clone(),
        disk: manifest::Disk {
            disk_guid: disk_guid.to_string(),
            sector_size: SECTOR,
            size: disk_size,
            partitions: guids
                .iter()
                .map(|(spec, r, g, used)| manifest::Partition {
                    number: spec.number,
                    label: spec.label.into(),
                    type_guid: spec.type_guid.into(),
                    guid: g.to_string(),
                    first_lba: r.first_lba(),
                    last_lba: r.last_lba(),
                    used: if spec.number == partitions::ESP.number {
                        esp_used
                    } else {
                        *used
                    },
                })
                .collect(),
        },
        verity: manifest::Verity {
            root_hash: root_hash_hex.clone(),
            salt: hex::encode(&params.salt),
            uuid: verity::uuid_string(&params.uuid),
            hash_algorithm: params.algorithm.clone(),
            data_block_size: params.data_block_size,
            hash_block_size: params.hash_block_size,
            data_blocks: params.data_blocks,
        },
        boot: manifest::Boot {
            kernel_version: kver.clone(),
            cmdline: cmdline.clone(),
            entry: entry_name,
            initrd_size: rd.bytes.len() as u64,
            initrd_sha256: initrd_sha,
        },
        checks,
        rke2: rke2_info,
        ukis: vec![uki_record],
        esp_files,
        // Filled in the published copy only: see `manifest::Manifest::outputs`.
        outputs: Vec::new(),
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).map_err(stage("esp"))?;
    manifest_json.push(b'\n');
    let esp_sig = manifest_key.as_ref().map(|k| sign::sign(k, &manifest_json));
    esp_content.add(paths::ESP_MANIFEST, Blob::bytes(manifest_json));
    // Always there (zeros when unsigned), so `rke2-image sign` can fill it in place.
    esp_content.add(
        paths::ESP_SIGNATURE,
        Blob::bytes(sign::esp_block(esp_sig.as_ref())),
    );
    let fat_opts = fat::Options {
        label: partitions::ESP_FS_LABEL.into(),
        volume_id: u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]),
        mtime: epoch,
    };
    fat::write(
        &esp_content.sorted(),
        out,
        esp_r.offset,
        esp_r.size,
        &fat_opts,
    )
    .map_err(stage("esp"))?;
    lap("esp", &mut timings);

    // --- disk ----------------------------------------------------------------------------
    let mut table = Table::new(disk_guid, disk_size, SECTOR).map_err(stage("disk"))?;
    for (spec, r, g, _) in &guids {
        table
            .add(
                spec.number,
                Entry {
                    type_guid: Guid::parse(spec.type_guid).map_err(stage("disk"))?,
                    guid: *g,
                    first_lba: r.first_lba(),
                    last_lba: r.last_lba(),
                    attributes: 0,
                    name: spec.label.into(),
                },
            )
            .map_err(stage("disk"))?;
    }
    table.write(out).map_err(stage("disk"))?;
    lap("disk", &mut timings);

    // --- outputs -------------------------------------------------------------------------
    let final_path = outputs.image_path().to_path_buf();
    let manifest_path = outputs.manifest_path().to_path_buf();
    // The published manifest adds the image's own hash (the embedded one cannot hold it).
    let hash_start = Instant::now();
    let published =
        sign::published_manifest(&manifest, outputs.file(), outputs.companion_records())
            .map_err(stage("outputs"))?;
    log(&format!(
        "outputs: image sha256 for the published manifest in {:.1}s",
        hash_start.elapsed().as_secs_f64()
    ));
    let published_sig = manifest_key.as_ref().map(|k| sign::sign(k, &published));
    outputs
        .publish_signed(&published, published_sig.as_ref().map(|s| &s[..]))
        .map_err(stage("outputs"))?;
    lap("outputs", &mut timings);
    log(&format!(
        "outputs: {} ({} MiB), {}",
        final_path.display(),
        disk_size / MIB,
        manifest_path.display()
    ));
    Ok(BuildResult {
        image: final_path,
        manifest_path,
        manifest,
        timings,
    })
}

/// Path, size and sha256 of every ESP file so far, sorted by path (the manifest's `espFiles`).
fn esp_file_records(files: &mut [(String, Blob)]) -> std::io::Result<Vec<manifest::EspFile>> {
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

/// The SBOM of the composed root: staged to be published beside the image, returned for the ESP.
fn build_sbom(
    tree: &Tree,
    def: &Definition,
    epoch: u64,
    inputs: &[manifest::Input],
    outputs: &mut publish::Outputs,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, BuildError> {
    let rke2 = def
        .rke2
        .as_ref()
        .map(|r| (r.version.as_str(), r.origin.as_str()));
    let s = sbom::build(
        tree,
        &sbom::Inputs {
            name: &def.name,
            version: &def.version,
            epoch,
            rke2,
            inputs,
        },
    )
    .map_err(stage("sbom"))?;
    for n in &s.notes {
        log(n);
    }
    let path = outputs
        .add_companion(sbom::SUFFIX, s.json.clone())
        .map_err(stage("sbom"))?;
    log(&format!(
        "sbom: {} ({} KiB): {} Debian packages, {} container images",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        s.json.len().div_ceil(1024),
        s.debs,
        s.images
    ));
    Ok(s.json)
}

/// What the initrd thread hands back: the initrd, systemd-boot, the bytes of the kernel, the
/// systemd stub and os-release (for the UKI), and its time.
type SideOutput = (initrd::Initrd, Blob, [Vec<u8>; 3], Duration);

/// A regular file of the tree (following symlinks) as a blob.
fn file_blob(tree: &Tree, path: &str) -> Option<Blob> {
    let real = tree.resolve(path.as_bytes(), true).ok()?;
    match &tree.get(&real)?.kind {
        Kind::File(b) => Some(b.clone()),
        _ => None,
    }
}

/// Labels for the directories rke2-init creates on the state partition, from the image's own
/// policy (the node has no policy tools in the initrd).
fn add_state_labels(
    tree: &mut Tree,
    fc: &selinux::FileContexts,
    epoch: u64,
) -> Result<(), BoxError> {
    let mut text = String::from(
        "# <state path> <context>: written by rke2-image from this image's file_contexts\n",
    );
    for (state_path, system_path) in paths::STATE_DIRS {
        let label = fc.lookup(system_path.as_bytes(), crate::tree::S_IFDIR | 0o755).ok_or_else(|| {
            format!("the image's SELinux policy has no label for {system_path}, which rke2-init creates on the state partition")
        })?;
        text.push_str(&format!("{state_path} {label}\n"));
    }
    tree.insert_resolved(
        paths::STATE_LABELS.as_bytes(),
        Inode::new(Kind::File(Blob::bytes(text)), 0o644, 0, 0, epoch),
    )?;
    Ok(())
}

/// `/etc/selinux/config` must agree with the command line: systemd loads the policy only when
/// the config asks for it.
fn set_selinux_config(tree: &mut Tree, mode: SelinuxMode, epoch: u64) -> Result<(), BoxError> {
    let path = b"etc/selinux/config";
    let Some(id) = tree.lookup(path) else {
        return Ok(());
    };
    let old = tree.read_file(path)?;
    let want = match mode {
        SelinuxMode::Enforcing => "enforcing",
        SelinuxMode::Permissive => "permissive",
        SelinuxMode::Disabled => "disabled",
    };
    let text = String::from_utf8_lossy(&old);
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("SELINUX=") {
                found = true;
                format!("SELINUX={want}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("SELINUX={want}"));
    }
    let mut bytes = out.join("\n").into_bytes();
    bytes.push(b'\n');
    let inode = tree.inode(id).clone();
    let mut new = Inode::new(
        Kind::File(Blob::bytes(bytes)),
        inode.mode,
        inode.uid,
        inode.gid,
        epoch,
    );
    new.xattrs = inode.xattrs;
    tree.insert(path, new)?;
    Ok(())
}

pub use crate::publish::write_atomic;
