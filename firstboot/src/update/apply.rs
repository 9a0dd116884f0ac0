//! `rke2-update apply`: a signed bundle into the inactive slot.
//!
//! Order (each step only after the previous one succeeded): signature, image name,
//! architecture, version and sizes are checked before anything is touched; the record says
//! `writing`; the inactive slot's entries are removed from the ESP (a half-written slot can
//! never boot); the slot's UKI streams to a temporary, non-bootable name on the ESP, the hash
//! device and the root stream into the slot's partitions (fsynced); the root is read whole
//! through dm-verity with the signed root hash; only then the UKI is renamed to
//! `<name>-<version>-<slot>+<tries>.efi`, and for a downgrade the running entry to `+0`. The
//! running slot's entry is never touched before that point, so any failure (or a power cut)
//! leaves the node booting what it runs now.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use rke2_image_contract::update::{
    self as contract, compare_versions, Entry, EntryState, UpdateInfo,
};

use super::{esp, other, running_slot, state, Roots};

/// Checks that the data written to the slot's partitions is what the signed root hash says.
pub trait Verifier {
    /// `root` and `verity` are the slot's partition nodes (already written and synced).
    fn verify(&self, root: &Path, verity: &Path, info: &UpdateInfo) -> Result<(), String>;
}

/// The kernel as the oracle: dm-linear maps of both partitions, dm-verity with the signed
/// root hash, and the whole root read through it (needs block devices and device-mapper).
pub struct DmVerity;

impl Verifier for DmVerity {
    fn verify(&self, root: &Path, verity: &Path, info: &UpdateInfo) -> Result<(), String> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let devno = |p: &Path| -> Result<String, String> {
            let md = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let r = md.rdev();
            Ok(format!(
                "{}:{}",
                nix::sys::stat::major(r),
                nix::sys::stat::minor(r)
            ))
        };
        let mut sb = vec![0u8; rke2_image_contract::verity::SUPERBLOCK_SIZE as usize];
        File::open(verity)
            .and_then(|f| f.read_exact_at(&mut sb, 0))
            .map_err(|e| {
                format!(
                    "reading the verity superblock from {}: {e}",
                    verity.display()
                )
            })?;
        let params = rke2_image_contract::verity::Superblock::parse(&sb)
            .map_err(|e| format!("{}: {e}", verity.display()))?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&info.root_hash, &mut hash)
            .map_err(|e| format!("update.json rootHash: {e}"))?;
        crate::install::write::verify_verity(
            "rke2-update",
            (&devno(root)?, 0, info.root_size),
            (&devno(verity)?, 0, info.verity_size),
            &params,
            &hash,
            &format!(
                "{} does not match the bundle's signed root hash",
                root.display()
            ),
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub allow_downgrade: bool,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub from_version: String,
    pub to_version: String,
    pub slot: char,
    /// The new entry's file name.
    pub entry: String,
    pub downgrade: bool,
    /// The trusted key file that verified the bundle.
    pub key: String,
}

impl Done {
    pub fn summary(&self) -> String {
        format!(
            "{} {} -> {} written to slot {} and verified (signed by {}); boot entry {} boots \
             next; reboot to use it",
            if self.downgrade {
                "downgrade"
            } else {
                "update"
            },
            self.from_version,
            self.to_version,
            self.slot,
            self.key,
            self.entry
        )
    }
}

/// A partition node of boot.json under the system root (`/dev/vda4` -> `<root>/dev/vda4`).
fn node(roots: &Roots, b: &contract::BootInfo, label: &str) -> Result<PathBuf, String> {
    let p = b
        .partition(label)
        .ok_or_else(|| format!("boot.json: no partition labelled {label}"))?;
    Ok(roots.root.join(p.node.trim_start_matches('/')))
}

/// Bytes a partition node (block device or, in tests, a regular file) holds.
fn capacity(p: &Path) -> Result<u64, String> {
    let f = File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?;
    let md = f.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
    if md.is_file() {
        return Ok(md.len());
    }
    crate::init::device_bytes(&f).map_err(|e| format!("size of {}: {e}", p.display()))
}

/// Checks a signed `info` against this node: same image, architecture, a newer version (or an
/// allowed downgrade). Returns whether it is a downgrade.
pub fn check_info(
    info: &UpdateInfo,
    image: &str,
    running: &str,
    allow_downgrade: bool,
) -> Result<bool, String> {
    if info.image != image {
        return Err(format!(
            "the bundle is for image {:?}, this node runs {image:?}; refusing another image's update",
            info.image
        ));
    }
    if info.architecture != contract::ARCH_X86_64 {
        return Err(format!(
            "the bundle is for architecture {}, this node is {}",
            info.architecture,
            contract::ARCH_X86_64
        ));
    }
    match compare_versions(&info.version, running) {
        std::cmp::Ordering::Equal => Err(format!("already running {running}")),
        std::cmp::Ordering::Less if !allow_downgrade => Err(format!(
            "{} is older than the running {running}; pass --allow-downgrade to install it anyway",
            info.version
        )),
        std::cmp::Ordering::Less => Ok(true),
        std::cmp::Ordering::Greater => Ok(false),
    }
}

fn stream_to(dst: &Path, src: &mut dyn Read) -> Result<u64, String> {
    let f = OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| format!("opening {} for writing: {e}", dst.display()))?;
    esp::copy_synced(f, dst, src)
}

/// Applies the bundle read from `src` (`what` names it in messages).
pub fn apply(
    roots: &Roots,
    src: &mut dyn Read,
    what: &str,
    opts: &Options,
    verifier: &dyn Verifier,
    progress: &mut dyn FnMut(&str),
) -> Result<Done, String> {
    let b = roots.disk_boot()?;
    let slot = running_slot(&b)?;
    let target = other(slot);
    let ii = roots.image_info()?;
    let policy = roots.policy()?;
    let entries = esp::list(&roots.esp, &ii.name)?;
    let running = esp::of_slot(&entries, slot).cloned();
    if let Some(EntryState::Pending(n)) = running.as_ref().map(Entry::state) {
        return Err(format!(
            "the running slot {slot} ({}) is not blessed yet ({n} tries left): wait for it to \
             be blessed (rke2-update-health.service) or roll back first",
            ii.version
        ));
    }
    // Fail on an unreadable record now, before anything is written.
    state::load(&roots.state)?;
    let (root_node, verity_node) = (
        node(roots, &b, &format!("root-{target}"))?,
        node(roots, &b, &format!("root-{target}-verity"))?,
    );
    let progress = std::cell::RefCell::new(progress);
    let say = |m: &str| (progress.borrow_mut())(m);
    let mut downgrade = false;
    let mut started = false;
    let record = |result: &str, reason: &str, to: &str| {
        state::update(&roots.state, |s| {
            s.last = Some(state::Record {
                from_slot: slot.to_string(),
                from_version: ii.version.clone(),
                to_slot: target.to_string(),
                to_version: to.to_string(),
                result: result.to_string(),
                reason: reason.to_string(),
                tries: policy.tries,
            })
        })
        .map(|_| ())
    };
    let mut to_version = String::new();
    let r = (|| -> Result<(UpdateInfo, String), String> {
        let mut check = |info: &UpdateInfo| -> Result<(), String> {
            downgrade = check_info(info, &ii.name, &ii.version, opts.allow_downgrade)?;
            for (n, size, p) in [
                ("root.img", info.root_size, &root_node),
                ("verity.img", info.verity_size, &verity_node),
            ] {
                let cap = capacity(p)?;
                if size > cap {
                    return Err(format!(
                        "{n} is {size} bytes but {} holds only {cap}; this update needs a \
                         larger partition layout (reinstall)",
                        p.display()
                    ));
                }
            }
            to_version = info.version.clone();
            record(state::WRITING, "", &info.version)?;
            started = true;
            for e in entries.iter().filter(|e| e.slot == target) {
                esp::remove(&roots.esp, e)?;
            }
            esp::discard_temp(&roots.esp, target);
            say(&format!(
                "signature and checks passed: {} {} -> slot {target}",
                info.image, info.version
            ));
            Ok(())
        };
        let uki = contract::uki_member(target);
        let mut sink = |m: &contract::Member, r: &mut dyn Read| -> Result<(), String> {
            if m.name == uki {
                esp::write_temp(&roots.esp, target, r)?;
            } else if m.name == contract::VERITY {
                say(&format!(
                    "writing {} bytes to {}",
                    m.size,
                    verity_node.display()
                ));
                stream_to(&verity_node, r)?;
            } else if m.name == contract::ROOT {
                say(&format!(
                    "writing {} bytes to {}",
                    m.size,
                    root_node.display()
                ));
                stream_to(&root_node, r)?;
            }
            Ok(())
        };
        let (info, key) = super::bundle::read(src, &roots.keys, &mut check, &mut sink)
            .map_err(|e| format!("{what}: {e}"))?;
        say(&format!(
            "verifying slot {target} through dm-verity against the signed root hash"
        ));
        verifier
            .verify(&root_node, &verity_node, &info)
            .map_err(|e| format!("verifying slot {target}: {e}"))?;
        Ok((info, key))
    })();
    let fail = |reason: String| -> String {
        esp::discard_temp(&roots.esp, target);
        if started {
            if let Err(e) = record(state::FAILED, &reason, &to_version) {
                return format!("{reason}; also: {e}");
            }
        }
        format!(
            "{reason}; the node keeps booting slot {slot} ({})",
            ii.version
        )
    };
    let (info, key) = r.map_err(fail)?;
    let entry = Entry {
        name: ii.name.clone(),
        version: info.version.clone(),
        slot: target,
        tries_left: Some(policy.tries),
        tries_done: None,
    };
    esp::install_temp(&roots.esp, target, &entry).map_err(fail)?;
    if downgrade {
        // Make the new (lower) version win: the running entry sorts last with zero tries.
        if let Some(run) = &running {
            esp::mark_bad(&roots.esp, run).map_err(fail)?;
        }
    }
    record(state::PENDING, "", &info.version)?;
    Ok(Done {
        from_version: ii.version.clone(),
        to_version: info.version,
        slot: target,
        entry: entry.file_name(),
        downgrade,
        key,
    })
}
