//! `rke2-init`: PID 1 of the initrd.
//!
//! Mounts the API filesystems, loads the boot modules, opens the verity-protected EROFS root
//! of the active slot, creates (first boot) and mounts the state partition, builds the
//! writable overlays and persistent directories, then switches root to `/sbin/init`.
//! Pure logic lives in the submodules and is unit-tested; [`run`] is the thin syscall glue.

pub mod bootinfo;
pub mod cmdline;
pub mod disk;
pub mod dm;
pub use rke2_image_contract::iso9660;
pub mod modules;
pub mod state;

use rke2_image_contract::{gpt, partitions, paths};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the new root is assembled.
pub const SYSROOT: &str = "/sysroot";
/// Smallest state partition worth creating.
pub const MIN_STATE_BYTES: u64 = 256 << 20;

/// One boot failure: what failed, on which device or path, and why. Printed as one line.
#[derive(Debug, thiserror::Error)]
pub struct Failure {
    pub what: String,
    pub subject: String,
    pub why: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.what, self.subject, self.why)
    }
}

fn fail(what: &str, subject: impl fmt::Display, why: impl fmt::Display) -> Failure {
    Failure {
        what: what.to_string(),
        subject: subject.to_string(),
        why: why.to_string(),
    }
}

/// Seconds since boot (CLOCK_BOOTTIME), the clock the kernel's own log uses.
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// Prints one console line prefixed like the kernel log, so timings line up.
pub fn say(msg: &str) {
    println!("[{:>12.6}] rke2-init: {msg}", uptime());
}

fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> Result<(), Failure> {
    if let Err(e) = fs::create_dir_all(target) {
        return Err(fail("creating mount point", target, e));
    }
    nix::mount::mount(Some(src), target, fstype, flags, data).map_err(|e| {
        fail(
            &format!("mounting {} {src}", fstype.unwrap_or("(bind/move)")),
            target,
            e.desc(),
        )
    })
}

/// Mounts proc, sysfs, devtmpfs and /run in the initrd.
fn mount_api() -> Result<(), Failure> {
    use nix::mount::MsFlags as F;
    let nosuid = F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC;
    mount("proc", "/proc", Some("proc"), nosuid, None)?;
    mount("sysfs", "/sys", Some("sysfs"), nosuid, None)?;
    mount(
        "devtmpfs",
        "/dev",
        Some("devtmpfs"),
        F::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount(
        "tmpfs",
        "/run",
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Loads the initrd's module list and its dependencies from `lib/modules/<kver>`.
pub fn load_modules(root: &Path) -> Result<usize, Failure> {
    let list_path = root.join(paths::INITRD_MODULE_LIST);
    let list = match fs::read_to_string(&list_path) {
        Ok(t) => t,
        // A kernel with everything built in needs no list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(fail("reading module list", list_path.display(), e)),
    };
    let kver = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .map_err(|e| fail("reading kernel release", "uname", e.desc()))?;
    let dir = root.join(paths::INITRD_MODULES).join(&kver);
    let read = |name: &str, required: bool| -> Result<String, Failure> {
        match fs::read_to_string(dir.join(name)) {
            Ok(t) => Ok(t),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(fail(
                "reading module index (initrd built for another kernel?)",
                dir.join(name).display(),
                e,
            )),
        }
    };
    let db = modules::ModuleDb::parse(
        &read("modules.dep", true)?,
        &read("modules.softdep", false)?,
        &read("modules.alias", false)?,
    )
    .with_builtin(&read("modules.builtin", false)?);
    let order = db
        .load_order(&modules::parse_wanted(&list))
        .map_err(|e| fail("resolving module dependencies", list_path.display(), e))?;
    let mut loaded = 0;
    for item in &order {
        let path = dir.join(&item.path);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(_) if item.optional => continue,
            Err(e) => return Err(fail("opening kernel module", path.display(), e)),
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            // Optional providers (e.g. crc32c-intel without SSE4.2) may not fit this CPU.
            Err(_) if item.optional => {}
            // CPU-feature-gated modules refuse with ENODEV; the load list may name them
            // directly (a builder resolving softdeps itself), so this is not fatal.
            Err(nix::errno::Errno::ENODEV) => {
                say(&format!(
                    "warning: {} does not support this machine (ENODEV), skipped",
                    item.path
                ));
            }
            Err(e) => return Err(fail("loading kernel module", path.display(), e.desc())),
        }
    }
    Ok(loaded)
}

/// Waits until `find` succeeds or `timeout` passes; returns its last error on timeout.
fn wait_for<T>(
    timeout: Duration,
    mut find: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match find() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(format!("{e} (waited {} s)", timeout.as_secs()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn devnode(name: &str) -> String {
    format!("/dev/{name}")
}

/// Checks the GPT type GUIDs of the partitions found by label, so a stray partition that
/// only carries our label is never used as root.
fn check_types(
    disk: &str,
    root: &disk::PartDev,
    hash: &disk::PartDev,
) -> Result<gpt::Table, Failure> {
    let dev = devnode(disk);
    let f = File::open(&dev).map_err(|e| fail("opening boot disk", &dev, e))?;
    let size = device_bytes(&f).map_err(|e| fail("reading disk size", &dev, e))?;
    let g =
        gpt::Table::read(&f, size, sector_size(&f)).map_err(|e| fail("reading GPT", &dev, e))?;
    for (p, want) in [
        (root, partitions::ROOT_X86_64_TYPE),
        (hash, partitions::ROOT_VERITY_X86_64_TYPE),
    ] {
        let want_guid = gpt::Guid::parse(want).map_err(|e| fail("parsing type GUID", want, e))?;
        let ty = g.get(p.number).map(|e| e.type_guid);
        if ty != Some(want_guid) {
            return Err(fail(
                "checking partition type",
                devnode(&p.name),
                format!(
                    "GPT type {} is not {want}",
                    ty.map(|t| t.to_string()).unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
    }
    Ok(g)
}

fn sector_size(f: &File) -> u64 {
    nix::ioctl_read_bad!(blksszget, 0x1268, libc::c_int);
    let mut s: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int.
    match unsafe { blksszget(std::os::fd::AsRawFd::as_raw_fd(f), &mut s) } {
        Ok(_) if s >= 512 => s as u64,
        _ => 512,
    }
}

pub fn device_bytes(f: &File) -> Result<u64, String> {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut s: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    unsafe { blkgetsize64(std::os::fd::AsRawFd::as_raw_fd(f), &mut s) }
        .map_err(|e| e.desc().to_string())?;
    Ok(s)
}

/// Sets up dm-verity for the slot and mounts the EROFS root read-only at [`SYSROOT`].
fn open_root(p: &cmdline::BootParams) -> Result<(disk::PartDev, gpt::Table), Failure> {
    let (root, hash) = wait_for(p.device_timeout, || {
        disk::find_root(
            &disk::list_partitions(Path::new("/sys/class/block")),
            p.slot,
        )
    })
    .map_err(|e| fail("finding boot disk", format!("slot {}", p.slot), e))?;
    let g = check_types(&root.disk, &root, &hash)?;
    open_verity(
        p,
        (&devnode(&root.name), &root.dev),
        (&devnode(&hash.name), &hash.dev),
        "the root partition does not match rke2.roothash",
    )?;
    Ok((root, g))
}

/// Opens `data` (node, `major:minor`) through dm-verity with the hash device `hash` and the
/// command line's root hash, and mounts it read-only at [`SYSROOT`]. `mismatch` says what a
/// verity error means for this source.
fn open_verity(
    p: &cmdline::BootParams,
    data: (&str, &str),
    hash: (&str, &str),
    mismatch: &str,
) -> Result<(), Failure> {
    let hash_dev = hash.0.to_string();
    let mut sb = vec![0u8; 4096];
    File::open(&hash_dev)
        .and_then(|f| f.read_exact_at(&mut sb, 0))
        .map_err(|e| fail("reading verity superblock", &hash_dev, e))?;
    let params = rke2_image_contract::verity::Superblock::parse(&sb)
        .map_err(|e| fail("parsing verity superblock", &hash_dev, e))?;
    let mut root_hash = [0u8; 32];
    hex::decode_to_slice(&p.root_hash, &mut root_hash)
        .map_err(|e| fail("decoding root hash", "/proc/cmdline", e))?;
    let line = rke2_image_contract::verity::table(&params, data.1, hash.1, &root_hash);
    let (sectors, target, table) = split_table(&line).ok_or_else(|| {
        fail(
            "building verity table",
            &hash_dev,
            format!("malformed {line:?}"),
        )
    })?;
    let name = format!("rke2-root-{}", p.slot);
    let (major, minor) = dm::create_readonly(
        &name,
        &format!("RKE2-VERITY-{name}"),
        sectors,
        target,
        table,
    )
    .map_err(|e| {
        fail(
            "setting up dm-verity",
            format!("{} + {}", data.0, hash_dev),
            e,
        )
    })?;
    let mapped = dm_node(major, minor, "verity device")?;
    say(&format!(
        "verity root {} (data {}, hash {}, {} blocks)",
        mapped, data.0, hash_dev, params.data_blocks
    ));
    use nix::mount::MsFlags as F;
    mount(
        &mapped,
        SYSROOT,
        Some("erofs"),
        F::MS_RDONLY | F::MS_NODEV,
        None,
    )
    .map_err(|mut e| {
        e.why = format!("{} (a verity error means {mismatch})", e.why);
        e
    })?;
    Ok(())
}

/// `rke2.root=initramfs` (PXE): the root and its hash tree are files the kernel unpacked from
/// the second initrd (`rootfs.img`); each is attached read-only to a loop device and the pair
/// is opened through dm-verity like the partitions of a disk. A missing file stops the boot.
fn open_initramfs_root(p: &cmdline::BootParams) -> Result<(), Failure> {
    use rke2_image_contract::cmdline as keys;
    let mut devs = Vec::new();
    for path in [keys::INITRAMFS_ROOT_FILE, keys::INITRAMFS_VERITY_FILE] {
        if let Err(e) = fs::metadata(path) {
            return Err(fail(
                "finding the network-boot root",
                path,
                format!(
                    "{e}; {}={} needs rootfs.img loaded as a second initrd after the initrd (see boot.ipxe of the pxe output)",
                    keys::ROOT_SOURCE,
                    keys::ROOT_INITRAMFS
                ),
            ));
        }
        devs.push(attach_loop(path, false)?);
    }
    open_verity(
        p,
        (&devs[0].0, &devs[0].1),
        (&devs[1].0, &devs[1].1),
        "rootfs.img does not match rke2.roothash (corrupt or from another build)",
    )
}

/// Waits (5 s) for the kernel's devtmpfs to show `node`, a device just created; `shown` names
/// it in the error, `what` says what it is.
fn wait_for_node(node: &str, shown: &str, what: &str) -> Result<(), Failure> {
    wait_for(Duration::from_secs(5), || {
        if Path::new(node).exists() {
            Ok(())
        } else {
            Err(format!("{shown} did not appear"))
        }
    })
    .map_err(|e| fail(&format!("waiting for {what}"), node, e))
}

/// `<linux/loop.h>` requests (the libc crate does not export them).
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LOOP_SET_FD: libc::Ioctl = 0x4C00;
/// The whole block devices (`major:minor` by kernel name, sorted) that may hold the boot
/// medium: disks and CD drives, not partitions or the devices the initrd makes itself.
pub fn whole_disks(class_block: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(class_block) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "dm-", "zram", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
            || e.path().join("partition").exists()
        {
            continue;
        }
        if let Ok(dev) = fs::read_to_string(e.path().join("dev")) {
            out.push((name, dev.trim().to_string()));
        }
    }
    out.sort();
    out
}

/// The dm-linear mapping of the root file on a live ISO medium (the agent's `medium` source
/// finds the medium under it).
pub const ISO_ROOT_MAPPING: &str = "rke2-iso-root";

/// The devices under the dm device named `mapping` (`/sys/block/dm-*/dm/name`), sorted.
fn mapping_slaves(sys: &Path, mapping: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = std::fs::read_to_string(e.path().join("dm/name")).unwrap_or_default();
        if name.trim() != mapping {
            continue;
        }
        if let Ok(slaves) = std::fs::read_dir(e.path().join("slaves")) {
            out.extend(
                slaves
                    .flatten()
                    .map(|s| s.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    out.sort();
    out
}

/// The devices (kernel names) that may be the live ISO's boot medium: the one under the
/// [`ISO_ROOT_MAPPING`] this program made when it exists, else every whole block device.
/// The agent's `medium` source and the installer look there.
pub fn iso_medium_candidates(sys: &Path) -> Vec<String> {
    let under = mapping_slaves(sys, ISO_ROOT_MAPPING);
    if !under.is_empty() {
        return under;
    }
    whole_disks(&sys.join("class/block"))
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// A medium carrying the `iso` output's root: device name, `major:minor`, and where the root
/// and its hash tree are on it.
struct IsoMedium {
    name: String,
    dev: String,
    root: iso9660::Extent,
    verity: iso9660::Extent,
}

/// Reads every whole block device for the ISO 9660 files of the root. Ok when at least one
/// carries both; otherwise the reason for each device.
fn scan_iso_media(class_block: &Path) -> Result<Vec<IsoMedium>, String> {
    use rke2_image_contract::cmdline as keys;
    let mut found = Vec::new();
    let mut why = Vec::new();
    for (name, dev) in whole_disks(class_block) {
        let node = devnode(&name);
        let probe = || -> Result<IsoMedium, String> {
            let f = File::open(&node).map_err(|e| e.to_string())?;
            let size = device_bytes(&f)?;
            let root = iso9660::find(&f, keys::ISO_ROOT_FILE).map_err(|e| e.to_string())?;
            let verity = iso9660::find(&f, keys::ISO_VERITY_FILE).map_err(|e| e.to_string())?;
            for (path, e) in [(keys::ISO_ROOT_FILE, root), (keys::ISO_VERITY_FILE, verity)] {
                if e.offset % 512 != 0 || e.len % 512 != 0 || e.len == 0 {
                    return Err(format!(
                        "{path} ({} bytes at {}) is not whole 512-byte sectors",
                        e.len, e.offset
                    ));
                }
                if e.offset + e.len > size {
                    return Err(format!(
                        "{path} ends at byte {}, past the device's {size} bytes (a truncated copy?)",
                        e.offset + e.len
                    ));
                }
            }
            Ok(IsoMedium {
                name: name.clone(),
                dev: dev.clone(),
                root,
                verity,
            })
        };
        match probe() {
            Ok(m) => found.push(m),
            Err(e) => why.push(format!("{node}: {e}")),
        }
    }
    if found.is_empty() {
        if why.is_empty() {
            why.push("no block devices yet".into());
        }
        return Err(why.join("; "));
    }
    Ok(found)
}

/// Maps `len` bytes at `offset` of the device `dev` (`major:minor`) read-only with
/// dm-linear; returns the mapped node and its `major:minor`.
fn map_linear(name: &str, dev: &str, e: iso9660::Extent) -> Result<(String, String), Failure> {
    let (major, minor) = dm::create_readonly(
        name,
        &format!("RKE2-LINEAR-{name}"),
        e.len / 512,
        "linear",
        &format!("{dev} {}", e.offset / 512),
    )
    .map_err(|why| fail("setting up dm-linear", format!("{name} on {dev}"), why))?;
    let node = dm_node(major, minor, "dm-linear device")?;
    Ok((node, format!("{major}:{minor}")))
}

/// Waits for the node of the device-mapper device `major:minor` (devtmpfs makes it); `what`
/// says what it is.
fn dm_node(major: u64, minor: u64, what: &str) -> Result<String, Failure> {
    let node = format!("/dev/dm-{minor}");
    wait_for_node(&node, &format!("{node} ({major}:{minor})"), what)?;
    Ok(node)
}

/// `rke2.root=iso` (live boot of the `iso` output): finds the medium by reading every whole
/// block device (a CD drive has no partition devices; a disk the ISO was written to has the
/// ISO 9660 volume at the same place), maps the root and hash-tree files by their extents with
/// dm-linear and opens them through dm-verity. No medium, or more than one, stops the boot.
fn open_iso_root(p: &cmdline::BootParams) -> Result<(), Failure> {
    use rke2_image_contract::cmdline as keys;
    let source = format!("{}={}", keys::ROOT_SOURCE, keys::ROOT_ISO);
    let media = wait_for(p.device_timeout, || {
        scan_iso_media(Path::new("/sys/class/block"))
    })
    .map_err(|e| {
        fail(
            "finding the boot medium",
            &source,
            format!(
                "no device carries {} and {}: {e}",
                keys::ISO_ROOT_FILE,
                keys::ISO_VERITY_FILE
            ),
        )
    })?;
    if media.len() > 1 {
        let names: Vec<String> = media.iter().map(|m| devnode(&m.name)).collect();
        return Err(fail(
            "finding the boot medium",
            &source,
            format!(
                "more than one device carries {}: {}; attach only the medium to boot from",
                keys::ISO_ROOT_FILE,
                names.join(", ")
            ),
        ));
    }
    let m = &media[0];
    say(&format!(
        "boot medium {} ({}): root {} bytes at {}, verity {} bytes at {}",
        devnode(&m.name),
        m.dev,
        m.root.len,
        m.root.offset,
        m.verity.len,
        m.verity.offset
    ));
    let data = map_linear(ISO_ROOT_MAPPING, &m.dev, m.root)?;
    let hash = map_linear("rke2-iso-verity", &m.dev, m.verity)?;
    open_verity(
        p,
        (&data.0, &data.1),
        (&hash.0, &hash.1),
        "the medium's root does not match rke2.roothash (a damaged medium or another build's)",
    )
}

/// Attaches `path` to a free loop device (read-only unless `writable`); returns its node and
/// `major:minor`.
fn attach_loop(path: &str, writable: bool) -> Result<(String, String), Failure> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| {
            fail(
                "opening",
                "/dev/loop-control (is the loop module loaded?)",
                e,
            )
        })?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
    let n = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&ctl), LOOP_CTL_GET_FREE) };
    if n < 0 {
        return Err(fail(
            "finding a free loop device",
            "/dev/loop-control",
            std::io::Error::last_os_error(),
        ));
    }
    let node = format!("/dev/loop{n}");
    wait_for_node(&node, &node, "loop device")?;
    // Read-only on both sides: the kernel marks the loop device read-only when its backing
    // file is not open for writing.
    let open = |p: &str| OpenOptions::new().read(true).write(writable).open(p);
    let file = open(path).map_err(|e| fail("opening", path, e))?;
    let lo = open(&node).map_err(|e| fail("opening", &node, e))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&lo),
            LOOP_SET_FD,
            std::os::fd::AsRawFd::as_raw_fd(&file) as libc::c_long,
        )
    };
    if r != 0 {
        return Err(fail(
            "attaching to loop device",
            format!("{path} -> {node}"),
            std::io::Error::last_os_error(),
        ));
    }
    let st = nix::sys::stat::stat(node.as_str())
        .map_err(|e| fail("reading device number", &node, e.desc()))?;
    let dev = format!(
        "{}:{}",
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev)
    );
    let how = if writable { "read-write" } else { "read-only" };
    say(&format!("{path} attached {how} to {node} ({dev})"));
    Ok((node, dev))
}

/// Splits a one-target table line `<start> <sectors> <type> <params>` (start must be 0).
pub fn split_table(line: &str) -> Option<(u64, &str, &str)> {
    let mut it = line.splitn(4, ' ');
    if it.next()? != "0" {
        return None;
    }
    let sectors = it.next()?.parse().ok()?;
    Some((sectors, it.next()?, it.next()?))
}

/// Moves the API filesystems into the new root (they stay mounted across switch_root).
fn move_api() -> Result<(), Failure> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{SYSROOT}{m}");
        if !Path::new(&target).is_dir() {
            return Err(fail(
                "moving API filesystem",
                &target,
                "mount point missing in the image",
            ));
        }
        mount(m, &target, None, nix::mount::MsFlags::MS_MOVE, None)?;
    }
    Ok(())
}

/// Runs a program of the verified root (chrooted), e.g. mkfs.ext4.
fn run_in_root(argv: &[&str]) -> Result<(), Failure> {
    // /dev now lives inside the new root (std's Stdio::null would open the missing /dev/null).
    let null = File::open(format!("{SYSROOT}/dev/null"))
        .map_err(|e| fail("opening", format!("{SYSROOT}/dev/null"), e))?;
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(null)
        .current_dir("/")
        .chroot_compat(SYSROOT)
        .output()
        .map_err(|e| fail("running from the verified root", argv[0], e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(
            &format!("running {}", argv.join(" ")),
            argv.last().copied().unwrap_or(""),
            format!("{}: {}", out.status, err.trim()),
        ));
    }
    Ok(())
}

trait ChrootExt {
    fn chroot_compat(&mut self, dir: &str) -> &mut Self;
}
impl ChrootExt for std::process::Command {
    fn chroot_compat(&mut self, dir: &str) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let dir = dir.to_string();
        // SAFETY: only async-signal-safe syscalls (chroot, chdir) run between fork and exec.
        unsafe {
            self.pre_exec(move || {
                nix::unistd::chroot(dir.as_str())?;
                nix::unistd::chdir("/")?;
                Ok(())
            })
        }
    }
}

/// Formats `dev` as the state filesystem (ext4 labelled [`partitions::STATE_FS_LABEL`], root
/// owned by 0:0) with the verified root's mkfs — the state partition, a state disk or the RAM
/// state of a diskless node alike.
fn format_state(dev: &str) -> Result<(), Failure> {
    run_in_root(&[
        "/sbin/mkfs.ext4",
        "-q",
        "-F",
        "-L",
        partitions::STATE_FS_LABEL,
        "-E",
        "root_owner=0:0",
        dev,
    ])
}

fn set_label(path: &Path, ctx: &str) -> Result<(), Failure> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| fail("labelling", path.display(), "path contains NUL"))?;
    let mut v = ctx.as_bytes().to_vec();
    v.push(0);
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"security.selinux".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    if r != 0 {
        return Err(fail(
            "setting SELinux label",
            path.display(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The state directories' SELinux labels, from the verified root.
fn state_labels() -> Result<std::collections::BTreeMap<String, String>, Failure> {
    let labels_path = Path::new(SYSROOT).join(paths::STATE_LABELS);
    match fs::read_to_string(&labels_path) {
        Ok(t) => state::parse_labels(&t)
            .map_err(|e| fail("reading state labels", labels_path.display(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say(&format!(
                "warning: {} missing, state directories stay unlabelled",
                labels_path.display()
            ));
            Ok(Default::default())
        }
        Err(e) => Err(fail("reading state labels", labels_path.display(), e)),
    }
}

/// The RAM-backed state device of a diskless node: a sparse file in the initramfs (itself a
/// tmpfs, so only written blocks take memory) attached to a loop device, formatted ext4 after
/// the switch to the verified root. Not a plain tmpfs: SELinux labels tmpfs by type
/// transition and drops labels set before the policy loads, while ext4 keeps them in xattrs
/// exactly as the state partition does. Size: half the RAM (the initramfs's own limit).
pub const RAM_STATE_FILE: &str = "/rke2-state.img";

fn prepare_ram_state() -> Result<(String, String), Failure> {
    let mem =
        fs::read_to_string("/proc/meminfo").map_err(|e| fail("reading", "/proc/meminfo", e))?;
    let kib = cmdline::mem_total_kib(&mem)
        .ok_or_else(|| fail("reading", "/proc/meminfo", "no MemTotal line"))?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(RAM_STATE_FILE)
        .map_err(|e| fail("creating RAM state file", RAM_STATE_FILE, e))?;
    f.set_len(kib * 1024 / 2)
        .map_err(|e| fail("sizing RAM state file", RAM_STATE_FILE, e))?;
    drop(f);
    attach_loop(RAM_STATE_FILE, true)
}

/// State for a node whose root came from the initramfs: RAM (`ram`: the loop device of
/// [`prepare_ram_state`]), or the whole device
/// `rke2.state_disk` names (formatted only when blank). Same layout as the state partition.
fn setup_state_diskless(
    state: &cmdline::DisklessState,
    ram: Option<(String, String)>,
    timeout: Duration,
) -> Result<(), Failure> {
    let labels = state_labels()?;
    let state_root = PathBuf::from(SYSROOT).join(paths::STATE_MOUNT);
    let state_s = state_root.to_string_lossy().into_owned();
    match state {
        cmdline::DisklessState::Tmpfs => {
            let (node, majmin) = ram.ok_or_else(|| {
                fail(
                    "setting up RAM state",
                    RAM_STATE_FILE,
                    "no loop device prepared",
                )
            })?;
            format_state(&node)?;
            let name = node.trim_start_matches("/dev/").to_string();
            let part = disk::PartDev {
                name: name.clone(),
                disk: name,
                number: 0,
                label: String::new(),
                dev: majmin,
            };
            mount_ext4_as_dev(&part, &node, &state_s)?;
            say(&format!("state: RAM ({node}; diskless, lost at power-off)"));
            populate_state(&labels, true, &node)
        }
        cmdline::DisklessState::Disk(dev) => {
            let name = dev.trim_start_matches("/dev/").to_string();
            let sys = format!("{SYSROOT}/sys/class/block/{name}/dev");
            let majmin = wait_for(timeout, || {
                fs::read_to_string(&sys)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("{sys}: {e}"))
            })
            .map_err(|e| fail("finding state disk", dev, e))?;
            let mut head = vec![0u8; 1 << 20];
            let f = File::open(format!("{SYSROOT}{dev}"))
                .map_err(|e| fail("opening state disk", dev, e))?;
            let n = f
                .read_at(&mut head, 0)
                .map_err(|e| fail("reading state disk", dev, e))?;
            head.truncate(n);
            let created = match cmdline::state_disk_action(&head, partitions::STATE_FS_LABEL) {
                cmdline::StateDiskAction::Reuse => false,
                cmdline::StateDiskAction::Format => {
                    format_state(dev)?;
                    true
                }
                cmdline::StateDiskAction::Refuse(why) => {
                    return Err(fail("checking state disk", dev, why))
                }
            };
            let part = disk::PartDev {
                name: name.clone(),
                disk: name,
                number: 0,
                label: String::new(),
                dev: majmin,
            };
            mount_ext4_as_dev(&part, dev, &state_s)?;
            populate_state(&labels, created, dev)
        }
    }
}

/// Finds, creates on first boot, and mounts the state partition; then the overlays,
/// persistent directories and /tmp.
fn setup_state(root: &disk::PartDev, g: &mut gpt::Table) -> Result<(), Failure> {
    let disk_dev = devnode(&root.disk);
    // The API filesystems have moved into the new root by now.
    let class_block = PathBuf::from(format!("{SYSROOT}/sys/class/block"));
    let disk_path = format!("{SYSROOT}{disk_dev}");
    let labels = state_labels()?;
    let same_disk = |label: &str| {
        disk::list_partitions(&class_block)
            .into_iter()
            .find(|p| p.disk == root.disk && p.label == label)
    };
    let mut created = false;
    let part = match same_disk(partitions::STATE.label) {
        Some(p) => p,
        None => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&disk_path)
                .map_err(|e| fail("opening boot disk for writing", &disk_dev, e))?;
            let size = device_bytes(&f).map_err(|e| fail("reading disk size", &disk_dev, e))?;
            g.resize(size)
                .map_err(|e| fail("growing GPT to the disk size", &disk_dev, e))?;
            let range = state::state_range(g, partitions::ALIGN, MIN_STATE_BYTES).ok_or_else(|| {
                fail("creating state partition", &disk_dev, format!(
                    "less than {} MiB free after the last partition (disk is {} MiB); write the image to a larger disk",
                    MIN_STATE_BYTES >> 20, size >> 20))
            })?;
            let entry = state::state_entry(g, range)
                .map_err(|e| fail("creating state partition entry", &disk_dev, e))?;
            g.add(partitions::STATE.number, entry)
                .map_err(|e| fail("adding state partition to GPT", &disk_dev, e))?;
            g.write(&f).map_err(|e| fail("writing GPT", &disk_dev, e))?;
            f.sync_all()
                .map_err(|e| fail("syncing GPT", &disk_dev, e))?;
            add_kernel_partition(&f, partitions::STATE.number, range, g.sector_size)
                .map_err(|e| fail("telling the kernel about the state partition", &disk_dev, e))?;
            say(&format!(
                "created state partition {} on {disk_dev}: sectors {}..{} ({} MiB)",
                partitions::STATE.number,
                range.0,
                range.1,
                ((range.1 - range.0 + 1) * g.sector_size) >> 20
            ));
            wait_for(Duration::from_secs(10), || {
                same_disk(partitions::STATE.label)
                    .or_else(|| {
                        disk::list_partitions(&class_block)
                            .into_iter()
                            .find(|p| p.disk == root.disk && p.number == partitions::STATE.number)
                    })
                    .ok_or_else(|| "state partition device did not appear".to_string())
            })
            .map_err(|e| fail("waiting for state partition", &disk_dev, e))?
        }
    };
    let dev = devnode(&part.name);
    let mut sb = vec![0u8; 2048];
    File::open(format!("{SYSROOT}{dev}"))
        .and_then(|f| f.read_exact_at(&mut sb, 1024))
        .map_err(|e| fail("reading state partition", &dev, e))?;
    if !state::is_ext4_superblock(&sb) {
        // First boot (or a crash before the format finished): format from the verified root.
        format_state(&dev)?;
        created = true;
    }
    let state_root = PathBuf::from(SYSROOT).join(paths::STATE_MOUNT);
    mount_ext4_as_dev(&part, &dev, &state_root.to_string_lossy())?;
    populate_state(&labels, created, &dev)
}

/// With the state filesystem mounted at [`paths::STATE_MOUNT`]: its directories, the
/// overlays and bind mounts onto the new root, and /tmp. `dev` names it in messages.
fn populate_state(
    labels: &std::collections::BTreeMap<String, String>,
    created: bool,
    dev: &str,
) -> Result<(), Failure> {
    let state_root = PathBuf::from(SYSROOT).join(paths::STATE_MOUNT);
    use nix::mount::MsFlags as F;
    let stamp = state_root.join(paths::STATE_CREATED_STAMP);
    for (rel, _) in paths::STATE_DIRS {
        let p = state_root.join(rel);
        // Persistent directories are seeded from the image below; only create the others.
        let persistent = state::MOUNTS
            .iter()
            .any(|(m, b)| *m == rel && *b == state::Backing::Persistent);
        if persistent {
            continue;
        }
        fs::create_dir_all(&p).map_err(|e| fail("creating state directory", p.display(), e))?;
        if let Some(ctx) = labels.get(rel) {
            set_label(&p, ctx)?;
        }
    }
    for (dir, backing) in state::MOUNTS {
        let target = format!("{SYSROOT}/{dir}");
        let on_state = state_root.join(dir);
        match backing {
            state::Backing::Overlay => {
                if !Path::new(&target).is_dir() {
                    fs::create_dir_all(on_state.join("upper")).ok();
                }
                let opts = format!(
                    "lowerdir={target},upperdir={},workdir={}",
                    on_state.join("upper").display(),
                    on_state.join("work").display()
                );
                mount("overlay", &target, Some("overlay"), F::empty(), Some(&opts))?;
            }
            state::Backing::Persistent => {
                if !on_state.is_dir() {
                    seed_from_image(dir, &on_state, labels.get(dir).map(String::as_str))?;
                }
                mount(&on_state.to_string_lossy(), &target, None, F::MS_BIND, None)?;
            }
        }
    }
    mount(
        "tmpfs",
        &format!("{SYSROOT}/tmp"),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV,
        Some("mode=1777"),
    )?;
    if created {
        fs::write(&stamp, format!("created by rke2-init on {dev}\n"))
            .map_err(|e| fail("writing state stamp", stamp.display(), e))?;
        // Make the new partition, filesystem and seeded directories durable before anything
        // else runs: a power loss now must not leave a half-seeded state to be reused.
        nix::unistd::sync();
        say(&format!("state: created and formatted {dev}"));
    } else {
        say(&format!("state: mounted existing {dev}"));
    }
    Ok(())
}

/// Mounts the state filesystem under its real name `/dev/<name>` (what the running system
/// sees in /proc/mounts and resolves), through a temporary node in the initrd's now empty
/// /dev: the API filesystems have already moved into the new root.
fn mount_ext4_as_dev(part: &disk::PartDev, dev: &str, target: &str) -> Result<(), Failure> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let (major, minor) = disk::parse_dev(&part.dev).ok_or_else(|| {
        fail(
            "reading device number",
            dev,
            format!("bad dev {:?}", part.dev),
        )
    })?;
    let _ = fs::remove_file(dev);
    mknod(
        dev,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    )
    .map_err(|e| fail("creating device node", dev, e.desc()))?;
    use nix::mount::MsFlags as F;
    let r = mount(dev, target, Some("ext4"), F::MS_NOSUID | F::MS_NODEV, None);
    let _ = fs::remove_file(dev);
    r
}

/// Copies the image's `/<dir>` (with owners, modes and SELinux labels) into state, via a
/// temporary name so an interrupted copy is redone on the next boot.
fn seed_from_image(dir: &str, on_state: &Path, label: Option<&str>) -> Result<(), Failure> {
    let tmp = on_state.with_extension("seeding");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| fail("removing partial copy", tmp.display(), e))?;
    }
    let src = Path::new(SYSROOT).join(dir);
    let inside = |p: &Path| -> String {
        format!(
            "/{}",
            p.strip_prefix(SYSROOT).unwrap_or(p).to_string_lossy()
        )
    };
    if src.is_dir() {
        run_in_root(&["/bin/cp", "-a", &format!("/{dir}"), &inside(&tmp)])?;
    } else {
        fs::create_dir_all(&tmp).map_err(|e| fail("creating state directory", tmp.display(), e))?;
    }
    if let Some(ctx) = label {
        set_label(&tmp, ctx)?;
    }
    fs::rename(&tmp, on_state).map_err(|e| fail("renaming seeded directory", on_state.display(), e))
}

/// BLKPG_ADD_PARTITION: the kernel learns about the new partition while the root partition
/// on the same disk is in use (a full re-read would fail with EBUSY).
fn add_kernel_partition(
    f: &File,
    number: u32,
    range: (u64, u64),
    sector: u64,
) -> Result<(), String> {
    #[repr(C)]
    struct BlkpgPartition {
        start: libc::c_longlong,
        length: libc::c_longlong,
        pno: libc::c_int,
        devname: [libc::c_char; 64],
        volname: [libc::c_char; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    let mut part = BlkpgPartition {
        start: (range.0 * sector) as i64,
        length: ((range.1 - range.0 + 1) * sector) as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: 1, // BLKPG_ADD_PARTITION
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg points at a live, correctly sized blkpg_partition for the call.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(f), 0x1269, &mut arg) };
    if r != 0 {
        return Err(format!(
            "BLKPG_ADD_PARTITION: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Moves the new root to `/` and executes its init. Only returns on failure.
fn switch_root() -> Failure {
    let go = || -> Result<std::convert::Infallible, Failure> {
        let init = format!("{SYSROOT}/sbin/init");
        if fs::symlink_metadata(&init).is_err() {
            return Err(fail(
                "finding init",
                "/sbin/init",
                "missing in the verified root",
            ));
        }
        nix::unistd::chdir(SYSROOT).map_err(|e| fail("switch_root", SYSROOT, e.desc()))?;
        nix::mount::mount(
            Some("."),
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| fail("switch_root: moving new root to /", SYSROOT, e.desc()))?;
        nix::unistd::chroot(".").map_err(|e| fail("switch_root: chroot", SYSROOT, e.desc()))?;
        nix::unistd::chdir("/").map_err(|e| fail("switch_root: chdir", "/", e.desc()))?;
        say(&format!(
            "handing off to /sbin/init at {:.6} s after kernel start",
            uptime()
        ));
        let e = nix::unistd::execv(c"/sbin/init", &[c"/sbin/init"]).unwrap_err();
        Err(fail("executing", "/sbin/init", e.desc()))
    };
    match go() {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

/// Writes the boot facts into the new root's /run; a failure only warns (the node boots, and
/// `rke2-update` says boot.json is missing).
fn write_boot_facts(info: &rke2_image_contract::update::BootInfo) {
    if let Err(e) = bootinfo::write(&Path::new(SYSROOT).join("run"), info) {
        say(&format!("warning: boot facts for rke2-update: {e}"));
    }
}

/// The whole boot; returns only on failure.
pub fn run() -> Failure {
    let steps = || -> Result<(), Failure> {
        mount_api()?;
        let cmdline =
            fs::read_to_string("/proc/cmdline").map_err(|e| fail("reading", "/proc/cmdline", e))?;
        let params = cmdline::parse(&cmdline)
            .map_err(|e| fail("parsing kernel command line", "/proc/cmdline", e))?;
        DEBUG.store(params.debug, std::sync::atomic::Ordering::Relaxed);
        let n = load_modules(Path::new("/"))?;
        say(&format!("loaded {n} kernel modules"));
        match &params.root {
            cmdline::RootSource::Disk => {
                let (root, mut g) = open_root(&params)?;
                move_api()?;
                setup_state(&root, &mut g)?;
                let parts: Vec<(String, String, String)> =
                    disk::list_partitions(Path::new(&format!("{SYSROOT}/sys/class/block")))
                        .into_iter()
                        .filter(|p| p.disk == root.disk)
                        .map(|p| {
                            let guid = g.get(p.number).map(|e| e.guid.to_string());
                            (p.label, devnode(&p.name), guid.unwrap_or_default())
                        })
                        .collect();
                write_boot_facts(&bootinfo::boot_info(
                    "disk",
                    params.slot,
                    &params.root_hash,
                    &devnode(&root.disk),
                    &parts,
                ));
            }
            cmdline::RootSource::Initramfs { state } | cmdline::RootSource::Iso { state } => {
                if matches!(params.root, cmdline::RootSource::Iso { .. }) {
                    open_iso_root(&params)?;
                } else {
                    open_initramfs_root(&params)?;
                }
                // The loop device is set up while /dev is still the initrd's.
                let ram = match state {
                    cmdline::DisklessState::Tmpfs => Some(prepare_ram_state()?),
                    cmdline::DisklessState::Disk(_) => None,
                };
                move_api()?;
                setup_state_diskless(state, ram, params.device_timeout)?;
                let source = match params.root {
                    cmdline::RootSource::Iso { .. } => "iso",
                    _ => "initramfs",
                };
                write_boot_facts(&bootinfo::boot_info(
                    source,
                    params.slot,
                    &params.root_hash,
                    "",
                    &[],
                ));
            }
        }
        Ok(())
    };
    if let Err(f) = steps() {
        return f;
    }
    switch_root()
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// After a failure: print it, then reboot after a delay, or, with `rke2.debug`, keep the
/// machine up (and start a shell if the initrd has one) so the console can be inspected.
pub fn fail_and_halt(f: &Failure) -> ! {
    println!("rke2-init: FAILED: {f}");
    let debug =
        DEBUG.load(std::sync::atomic::Ordering::Relaxed)
            || fs::read_to_string("/proc/cmdline")
                .map(|c| {
                    cmdline::parse(&c).map(|p| p.debug).unwrap_or(
                        rke2_image_contract::cmdline::has(&c, rke2_image_contract::cmdline::DEBUG),
                    )
                })
                .unwrap_or(false);
    if debug {
        for sh in ["/bin/sh", "/sysroot/bin/sh"] {
            if Path::new(sh).exists() {
                println!("rke2-init: rke2.debug set, starting {sh}");
                let _ = std::process::Command::new(sh).status();
            }
        }
        println!("rke2-init: rke2.debug set, not rebooting");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!(
        "rke2-init: rebooting in {} s (add rke2.debug to the kernel command line to stop here)",
        REBOOT_DELAY.as_secs()
    );
    std::thread::sleep(REBOOT_DELAY);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Time to read the failure line before the reboot.
pub const REBOOT_DELAY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    /// A sysfs-like tree: whole disks and CD drives count; partitions and the initrd's own
    /// loop and device-mapper devices do not.
    #[test]
    fn whole_disks_skip_partitions_and_virtual_devices() {
        let t = tempfile::tempdir().unwrap();
        for (name, dev, partition) in [
            ("sda", "8:0", false),
            ("sda1", "8:1", true),
            ("sr0", "11:0", false),
            ("vda", "254:0", false),
            ("vda2", "254:2", true),
            ("loop0", "7:0", false),
            ("dm-0", "253:0", false),
            ("ram0", "1:0", false),
        ] {
            let d = t.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            if partition {
                std::fs::write(d.join("partition"), "1\n").unwrap();
            }
        }
        let got = super::whole_disks(t.path());
        let want: Vec<(String, String)> = [("sda", "8:0"), ("sr0", "11:0"), ("vda", "254:0")]
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(super::whole_disks(&t.path().join("missing")).is_empty());
    }

    #[test]
    fn splits_table_line() {
        assert_eq!(
            super::split_table("0 80 verity 1 8:2 8:3 4096 4096 10 1 sha256 ab -"),
            Some((80, "verity", "1 8:2 8:3 4096 4096 10 1 sha256 ab -"))
        );
        assert_eq!(super::split_table("8 80 verity x"), None);
    }
}
