//! The whole install in a live system, over roots passed in (`/sys`, `/dev`, mountinfo, the
//! kernel command line): find the boot medium and its payload, select the target again, skip a
//! disk that already holds this build, write, re-read the partition table, verify. The caller
//! (`main.rs`) then adds the boot entry ([`super::efi`]) and reboots or powers off.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use rke2_image_contract::cmdline as keys;

use super::target::{self, Inputs};
use super::write::{self, Payload, Region};
use super::{human, InstallRequest};
use crate::init::iso9660;

/// The roots the install reads.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub sys: &'a Path,
    pub dev: &'a Path,
    pub mountinfo: &'a str,
    pub cmdline: &'a str,
}

/// What was done.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// `/dev/<name>` of the target.
    pub disk: String,
    /// Kernel name of the target.
    pub name: String,
    /// False: the disk already held this build; nothing was written.
    pub wrote: bool,
    /// Bytes written and seconds taken by the write (without verification).
    pub bytes: u64,
    pub write_secs: f64,
    pub verify_secs: f64,
    /// The ESP's partition (first LBA, sectors) and the GPT's partition GUID, for the boot entry.
    pub esp_first_lba: u64,
    pub esp_sectors: u64,
    pub esp_guid: [u8; 16],
}

/// The medium carrying the payload: kernel name and the four files' regions.
struct Medium {
    name: String,
    file: File,
    regions: [Region; 4],
}

fn find_medium(env: &Env) -> Result<Medium, String> {
    let mut found = Vec::new();
    let mut why = Vec::new();
    for name in crate::init::iso_medium_candidates(env.sys) {
        let node = env.dev.join(&name);
        let probe = || -> Result<Medium, String> {
            let file = File::open(&node).map_err(|e| e.to_string())?;
            let mut regions = [Region { offset: 0, len: 0 }; 4];
            for (i, p) in [
                keys::ISO_HEAD_FILE,
                keys::ISO_ESP_FILE,
                keys::ISO_ROOT_FILE,
                keys::ISO_VERITY_FILE,
            ]
            .iter()
            .enumerate()
            {
                let e = iso9660::find(&file, p).map_err(|e| format!("{p}: {e}"))?;
                regions[i] = Region {
                    offset: e.offset,
                    len: e.len,
                };
            }
            Ok(Medium {
                name: name.clone(),
                file,
                regions,
            })
        };
        match probe() {
            Ok(m) => found.push(m),
            Err(e) => why.push(format!("/dev/{name}: {e}")),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no device carries the installer's files ({}, {}); boot the installer from the \
             `iso` output of a build that has them:\n  {}",
            keys::ISO_HEAD_FILE,
            keys::ISO_ESP_FILE,
            why.join("\n  ")
        )),
        _ => Err(format!(
            "more than one device carries the installer's files ({}); attach only one \
             installation medium",
            found
                .iter()
                .map(|m| format!("/dev/{}", m.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn root_hash(cmdline: &str) -> Result<[u8; 32], String> {
    let h = keys::get(cmdline, keys::ROOT_HASH).unwrap_or_default();
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).map_err(|_| {
        format!(
            "kernel command line {}={h:?} is not a sha256 root hash; boot the medium's own \
             entry (its UKI carries the hash)",
            keys::ROOT_HASH
        )
    })?;
    Ok(out)
}

/// Runs the install for `req`; `progress` gets every step (the console).
pub fn run(
    req: &InstallRequest,
    env: &Env,
    progress: &mut dyn FnMut(&str),
) -> Result<Done, String> {
    let hash = root_hash(env.cmdline)?;
    if keys::get(env.cmdline, keys::ROOT_SOURCE) != Some(keys::ROOT_ISO) {
        return Err(format!(
            "installing needs the installation medium ({}={}); this system booted otherwise \
             (a PXE install is not supported yet: boot the ISO)",
            keys::ROOT_SOURCE,
            keys::ROOT_ISO
        ));
    }
    let m = find_medium(env)?;
    progress(&format!("installation medium /dev/{}", m.name));
    let [head, esp, root, verity] = m.regions;
    let payload = Payload {
        medium: &m.file,
        head,
        esp,
        root,
        verity,
    };
    let image = write::image_table(&write::read_head(&payload)?)?;
    let inputs = Inputs {
        sys: env.sys,
        dev: env.dev,
        mountinfo: env.mountinfo,
        boot_device: Some(&m.name),
        image_size: image.disk_sectors * image.sector_size,
    };
    // A disk that already holds this build (the machine booted the medium again): as if named
    // with wipe, then checked for the build's GPT and verity superblock.
    let relaxed = InstallRequest {
        wipe: true,
        ..req.clone()
    };
    if let Ok(d) = target::select(&relaxed, &inputs) {
        if let Ok(f) = File::open(env.dev.join(&d.name)) {
            if write::installed(&f, d.size, &image, &payload) {
                progress(&format!(
                    "{} already holds this image; not writing it again",
                    d.describe()
                ));
                let l = write::layout(&image, d.size, &payload)?;
                return Ok(done(&d, &l, false, 0, 0.0, 0.0));
            }
        }
    }
    // Selected again right before writing: the disk may have changed since the request.
    let d = target::select(req, &inputs).map_err(|e| e.to_string())?;
    let node = env.dev.join(&d.name);
    // O_EXCL on a block device: refused while anything (a mount, device-mapper) holds it.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(&node)
        .map_err(|e| format!("opening {} for writing: {e}", d.path()))?;
    let size = crate::init::device_bytes(&f).map_err(|e| format!("{}: {e}", d.path()))?;
    let l = write::layout(&image, size, &payload)?;
    progress(&format!(
        "installing onto {} ({} of image data)",
        d.describe(),
        human(esp.len + root.len + verity.len)
    ));
    let t = Instant::now();
    let bytes = write::write(&f, &d.path(), &l, &payload, progress)?;
    let write_secs = write::secs(t);
    progress(&format!(
        "wrote {} in {write_secs:.1}s; verifying",
        human(bytes)
    ));
    let t = Instant::now();
    // The exclusive open ends here: BLKRRPART and dm-linear (which claims the disk) both fail
    // with EBUSY while another opener holds the disk exclusively.
    drop(f);
    let f = File::open(&node).map_err(|e| format!("opening {} again: {e}", d.path()))?;
    // The kernel's view of the new table (partition nodes); not fatal: the first boot reads
    // the table itself and nothing below needs the partition nodes.
    if let Err(e) = ioctl_none(&f, BLKRRPART) {
        progress(&format!(
            "warning: re-reading the partition table of {}: {e} (the next boot reads it)",
            d.path()
        ));
    }
    // Reads from the disk rather than the page cache for the checks.
    ioctl_none(&f, BLKFLSBUF).map_err(|e| format!("flushing the buffers of {}: {e}", d.path()))?;
    write::verify_esp_and_table(&f, &d.path(), &l, &payload)?;
    let dev = std::fs::read_to_string(env.sys.join("class/block").join(&d.name).join("dev"))
        .map_err(|e| format!("{}: major:minor: {e}", d.path()))?;
    write::verify_root(dev.trim(), &d.path(), &l, &payload, &hash)?;
    let verify_secs = write::secs(t);
    progress(&format!(
        "verified {} (ESP bytes, partition table, root-a through dm-verity) in {verify_secs:.1}s",
        d.path()
    ));
    Ok(done(&d, &l, true, bytes, write_secs, verify_secs))
}

fn done(d: &target::Disk, l: &write::Layout, wrote: bool, bytes: u64, w: f64, v: f64) -> Done {
    let esp = l.table.get(1);
    Done {
        disk: d.path(),
        name: d.name.clone(),
        wrote,
        bytes,
        write_secs: w,
        verify_secs: v,
        esp_first_lba: esp.map(|e| e.first_lba).unwrap_or(0),
        esp_sectors: esp.map(|e| e.sectors()).unwrap_or(0),
        esp_guid: esp.map(|e| e.guid.0).unwrap_or_default(),
    }
}

/// `<linux/fs.h>`: `_IO(0x12, 95)` and `_IO(0x12, 97)`.
const BLKRRPART: libc::Ioctl = 0x125f;
const BLKFLSBUF: libc::Ioctl = 0x1261;

fn ioctl_none(f: &File, req: libc::Ioctl) -> std::io::Result<()> {
    // SAFETY: both requests take no argument.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
