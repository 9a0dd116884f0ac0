//! Boot tests: the image boots under QEMU to multi-user with a verified root, FIPS and
//! SELinux enforcing; state persists; a larger disk is used; a tampered root never boots.
//!
//! The image is built by the real pipeline (`rke2-image build`, from `RKE2_TEST_BASE` with
//! the programs in `RKE2_TEST_PROGRAMS`) with the test-only probe overlay, and booted through
//! OVMF and systemd-boot as a machine would.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use rke2_qemu_tests::built::{self, Image};
use rke2_qemu_tests::probe;
use rke2_qemu_tests::vm::{accel, Boot, Config, Vm};
use rke2_testsupport::scratch::Scratch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Generous: TCG on a shared 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];

/// One VM at a time: the machines these run on have few cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("built")
}

/// The pipeline-built image, built once per test run; None (test skipped) without a base.
fn image() -> Option<&'static Image> {
    static IMG: OnceLock<Option<Image>> = OnceLock::new();
    // Checked by every test (outside the once-only init), so each skip is reported.
    let (base, programs) = rke2_qemu_tests::test_inputs()?;
    IMG.get_or_init(|| {
        let start = std::time::Instant::now();
        // The qcow2 output comes from the same build (issue 11 §2: it boots).
        let img = built::build_formats(&base, &programs, &work_dir(), "", "raw,qcow2")
            .expect("building test image");
        eprintln!(
            "built {} in {:.0} s (initrd {} bytes)",
            img.disk.display(),
            start.elapsed().as_secs_f64(),
            img.manifest.boot.initrd_size
        );
        Some(img)
    })
    .as_ref()
}

fn direct(img: &Image) -> Boot {
    Boot::Direct {
        kernel: img.kernel.clone(),
        initrd: img.initrd.clone(),
        cmdline: img.cmdline.clone(),
    }
}

struct Booted {
    facts: BTreeMap<String, String>,
    console: String,
    secs: f64,
}

/// Boots `disk` until the probe reports and the guest powers off.
fn boot_to_probe(disk: &Path, boot: Boot, name: &str) -> Booted {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    boot_to_probe_unlocked(disk, boot, name)
}

fn boot_to_probe_unlocked(disk: &Path, boot: Boot, name: &str) -> Booted {
    boot_to_probe_cfg(Config::new(disk, boot), name)
}

fn boot_to_probe_cfg(mut cfg: Config, name: &str) -> Booted {
    cfg.log = Some(work_dir().join(format!("{name}.console.log")));
    let mut vm = Vm::start(&cfg).unwrap();
    let t = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name} ({}): {e}", accel()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    eprintln!(
        "{name}: probe done {:.1} s after QEMU start ({})",
        t.as_secs_f64(),
        accel()
    );
    Booted {
        facts: probe::facts(&console),
        console,
        secs: t.as_secs_f64(),
    }
}

fn fact<'a>(b: &'a Booted, k: &str) -> &'a str {
    b.facts
        .get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("probe fact {k} missing; facts: {:?}", b.facts))
}

/// Asserts everything the default boot must show from inside.
fn check_default_boot(b: &Booted) {
    assert_eq!(fact(b, "root_fstype"), "erofs");
    assert!(
        fact(b, "root_dm_name").starts_with("rke2-root-a"),
        "{:?}",
        b.facts
    );
    assert!(fact(b, "root_dm_uuid").starts_with("RKE2-VERITY-"));
    assert_ne!(fact(b, "verity_refcnt"), "0");
    assert_ne!(fact(b, "verity_refcnt"), "");
    assert!(fact(b, "root_options").split(',').any(|o| o == "ro"));
    assert_eq!(fact(b, "root_writable"), "0");
    assert_eq!(fact(b, "fips"), "1");
    assert_eq!(fact(b, "selinux_enforce"), "1");
    assert!(!fact(b, "selinux_policyvers").is_empty());
    assert!(b.console.contains("fips mode: enabled"));
    assert_eq!(fact(b, "writable:/etc"), "1");
    assert_eq!(fact(b, "writable:/var"), "1");
    assert_eq!(fact(b, "fstype:/etc"), "overlay");
    assert_eq!(fact(b, "fstype:/var"), "ext4");
    assert_eq!(fact(b, "fstype:/tmp"), "tmpfs");
    assert!(
        fact(b, "state_source").starts_with("/dev/"),
        "{:?}",
        b.facts
    );
    assert!(fact(b, "label:/etc").contains(":etc_t:"), "{:?}", b.facts);
    assert!(fact(b, "label:/var").contains(":var_t:"), "{:?}", b.facts);
    for d in probe::avc_denials(&b.console) {
        eprintln!("observed: {d}");
    }
    let ours = probe::our_denials(&b.console);
    assert!(
        ours.is_empty(),
        "AVC denials on unlabelled paths or for our components: {ours:#?}"
    );
    assert!(b.console.contains("rke2-init: handing off to /sbin/init"));
}

#[test]
fn default_image_boots_uefi_to_multi_user_verified_fips_selinux() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("default.qcow2"));
    // The image file as built (it leaves disk.stateSize free for the state partition).
    built::overlay_disk(&img.disk, &disk, None).unwrap();
    let b = boot_to_probe(&disk, Boot::Uefi, "default-uefi");
    check_default_boot(&b);
    eprintln!(
        "multi-user reached (probe start) at {} s guest uptime, {:.1} s after QEMU start (UEFI)",
        fact(&b, "uptime"),
        b.secs
    );
}

/// The qcow2 output boots as the raw image does. The VM writes into a qcow2 overlay
/// (`-b <built>.qcow2 -F qcow2`), so the shared file stays as built and the test adds only what
/// the guest writes.
#[test]
fn qcow2_output_boots_uefi_verified_fips_selinux() {
    let img = rke2_qemu_tests::need!(image());
    let built_qcow2 = img
        .qcow2
        .as_ref()
        .expect("the shared build publishes a qcow2");
    let mut scratch = Scratch::new();
    let overlay = scratch.add(work_dir().join("qcow2-overlay.qcow2"));
    built::overlay_disk(built_qcow2, &overlay, None).unwrap();
    let cfg = Config::new(&overlay, Boot::Uefi);
    let b = {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        boot_to_probe_cfg(cfg, "qcow2-uefi")
    };
    check_default_boot(&b);
    eprintln!(
        "qcow2: multi-user reached {:.1} s after QEMU start (UEFI)",
        b.secs
    );
}

#[test]
fn state_persists_across_boots_and_is_created_once() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("persist.raw"));
    built::copy_disk(&img.disk, &disk, None).unwrap();
    let first = boot_to_probe(&disk, Boot::Uefi, "persist-1");
    check_default_boot(&first);
    assert!(first
        .console
        .contains("rke2-init: state: created and formatted"));
    assert_eq!(fact(&first, "counter:/etc/rke2-test-counter"), "0");
    assert_eq!(fact(&first, "counter:/var/lib/rke2-test-counter"), "0");
    let second = boot_to_probe(&disk, Boot::Uefi, "persist-2");
    assert!(second
        .console
        .contains("rke2-init: state: mounted existing"));
    assert!(!second.console.contains("created state partition"));
    assert_eq!(fact(&second, "counter:/etc/rke2-test-counter"), "1");
    assert_eq!(fact(&second, "counter:/var/lib/rke2-test-counter"), "1");
    assert_eq!(
        fact(&first, "state_fs_uuid"),
        fact(&second, "state_fs_uuid")
    );
    assert_eq!(fact(&first, "state_stamp"), fact(&second, "state_stamp"));
    // Oracle: sgdisk finds the table rke2-init grew consistent.
    let v = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&disk)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("No problems found"), "{out}");
}

/// The state filesystem (partition 6, where rke2-init created it) copied out of `disk` into a
/// sparse file, for e2fsprogs to read.
fn state_fs_copy(disk: &Path, name: &str) -> PathBuf {
    use std::io::{Read, Seek, SeekFrom, Write};
    let o = std::process::Command::new("sgdisk")
        .args(["-i", "6"])
        .arg(disk)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    let sector = |key: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("sgdisk -i 6: no {key}: {info}"))
    };
    let (first, last) = (sector("First sector:"), sector("Last sector:"));
    let out = work_dir().join(format!("{name}.state.ext4"));
    let mut src = std::fs::File::open(disk).unwrap();
    src.seek(SeekFrom::Start(first * 512)).unwrap();
    let mut dst = std::fs::File::create(&out).unwrap();
    let mut left = (last + 1 - first) * 512;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().all(|b| *b == 0) {
            dst.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            dst.write_all(&buf[..n]).unwrap();
        }
        left -= n as u64;
    }
    dst.set_len((last + 1 - first) * 512).unwrap();
    out
}

/// What e2fsprogs says about a state filesystem copy.
struct Ext4State {
    /// `Filesystem state:` of `dumpe2fs -h` (a journalled ext4 keeps `clean` while mounted).
    state: String,
    /// The `needs_recovery` feature: set while mounted, cleared by a clean unmount.
    needs_recovery: bool,
    /// `e2fsck -fn` exit status 0, and its report.
    fsck_ok: bool,
    report: String,
}

impl Ext4State {
    fn clean(&self) -> bool {
        self.state == "clean" && !self.needs_recovery
    }
}

fn state_fs_check(fs: &Path) -> Ext4State {
    let d = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(fs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&d.stdout).into_owned();
    let state = text
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem state:"))
        .unwrap_or_else(|| panic!("dumpe2fs -h: no state: {text}"))
        .trim()
        .to_string();
    let needs_recovery = text
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .is_some_and(|f| f.split_whitespace().any(|x| x == "needs_recovery"));
    let f = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(fs)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&f.stdout).into_owned() + &String::from_utf8_lossy(&f.stderr);
    Ext4State {
        state,
        needs_recovery,
        fsck_ok: f.status.success(),
        report,
    }
}

/// Power-off after a boot leaves the state ext4 clean: systemd does not stop the state mounts
/// (/etc, /var, ... with DefaultDependencies=no units in overlays/base) while services still
/// use them, and systemd-shutdown unmounts them after every process is gone. Clean means what
/// e2fsprogs says: state `clean` without `needs_recovery` (a journalled ext4 only sets that
/// while mounted) and `e2fsck -fn` exits 0. Control: a power cut on the same disk leaves the
/// journal needing recovery, so the check can see the difference.
#[test]
fn clean_power_off_leaves_state_filesystem_clean() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("shutdown.raw"));
    built::copy_disk(&img.disk, &disk, None).unwrap();
    // The probe ends with `systemctl poweroff`; boot_to_probe waits for QEMU to exit.
    let b = boot_to_probe(&disk, direct(img), "shutdown-clean");
    assert!(b
        .console
        .contains("rke2-init: state: created and formatted"));
    let failed: Vec<&str> = b
        .console
        .lines()
        .filter(|l| {
            l.contains("Failed unmounting")
                || l.contains("Failed to unmount")
                || l.contains("Could not unmount")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "failed unmounts at power-off: {failed:#?}"
    );
    let st = state_fs_check(&scratch.add(state_fs_copy(&disk, "shutdown-clean")));
    assert!(
        st.clean(),
        "after power-off: state {}, needs_recovery {}; e2fsck -fn:\n{}",
        st.state,
        st.needs_recovery,
        st.report
    );
    assert!(st.fsck_ok, "e2fsck -fn after power-off:\n{}", st.report);

    // Control: boot again, hold the machine up, cut the power.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let knob = work_dir().join("hold.knob");
    std::fs::write(&knob, "1").unwrap();
    let mut cfg = Config::new(&disk, direct(img));
    cfg.log = Some(work_dir().join("shutdown-cut.console.log"));
    cfg.fw_cfg
        .push(("opt/org.rke2-image/test/hold".into(), knob));
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for("RKE2-PROBE held=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("shutdown-cut ({}): {e}", accel()));
    assert!(vm.console().contains("rke2-init: state: mounted existing"));
    vm.power_cut();
    let st = state_fs_check(&scratch.add(state_fs_copy(&disk, "shutdown-cut")));
    assert!(
        !st.clean(),
        "a power cut with the state mounted must leave it not clean (journal to recover): state {}, needs_recovery {}",
        st.state,
        st.needs_recovery
    );
}

fn img_size(img: &Image) -> u64 {
    std::fs::metadata(&img.disk).unwrap().len()
}

#[test]
fn image_on_larger_disk_boots_and_state_fills_it() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("large.raw"));
    let size = img_size(img) + (3 << 30);
    built::copy_disk(&img.disk, &disk, Some(size)).unwrap();
    let b = boot_to_probe(&disk, Boot::Uefi, "large");
    let state: u64 = fact(&b, "state_bytes").parse().unwrap();
    let disk_bytes: u64 = fact(&b, "disk_bytes").parse().unwrap();
    assert_eq!(disk_bytes, size);
    // Everything after the built partitions, minus alignment and the backup GPT.
    let used_by_image = img
        .manifest
        .disk
        .partitions
        .iter()
        .map(|p| (p.last_lba + 1) * 512)
        .max()
        .unwrap();
    assert!(state + used_by_image <= size);
    assert!(
        state >= size - used_by_image - (2 << 20),
        "state {state} of disk {size}"
    );
    // Oracle: sgdisk sees partition 6 labelled state with the DPS var type.
    let o = std::process::Command::new("sgdisk")
        .args(["-i", "6"])
        .arg(&disk)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.contains(rke2_image_contract::partitions::VAR_TYPE),
        "{info}"
    );
    assert!(info.contains("Partition name: 'state'"), "{info}");
}

#[test]
fn tampered_root_is_refused() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("tampered.raw"));
    built::copy_disk(&img.disk, &disk, None).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        // The EROFS superblock (offset 1024) and a block in the middle of the filesystem (a
        // compressed root ends long before its partition: the superblock's block count at
        // offset 36 says where).
        let mut blocks = [0u8; 4];
        f.read_exact_at(&mut blocks, img.root_part.0 + 1024 + 36)
            .unwrap();
        let fs_len = u64::from(u32::from_le_bytes(blocks)) * 4096;
        assert!(
            fs_len > 0 && fs_len <= img.root_part.1,
            "EROFS size {fs_len}"
        );
        for off in [img.root_part.0 + 1024 + 8, img.root_part.0 + fs_len / 2] {
            let mut b = [0u8; 16];
            f.read_exact_at(&mut b, off).unwrap();
            for x in b.iter_mut() {
                *x ^= 0xff;
            }
            f.write_all_at(&b, off).unwrap();
        }
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.log = Some(work_dir().join("tampered.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for(
        "rke2-init: FAILED",
        &["RKE2-PROBE", "Reached target"],
        BOOT_TIMEOUT,
    )
    .unwrap();
    // rke2-init reboots after its delay; -no-reboot turns that into an exit.
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let c = vm.console();
    assert!(
        c.contains("is corrupted"),
        "no verity error on the console:\n{}",
        vm.tail()
    );
    assert!(!c.contains("RKE2-PROBE"));
    assert!(!c.contains("handing off to /sbin/init"));
}

/// Kernel timestamp (seconds) of the first console line containing `needle`.
fn stamp(console: &str, needle: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(needle))?;
    let inner = line.split_once('[')?.1.split_once(']')?.0;
    inner.trim().parse().ok()
}

/// Measurement, not a check (run with `--ignored`): our initrd against Debian's
/// initramfs-tools initrd of the same kernel, same QEMU settings, same disk. Prints the
/// kernel timestamps of the initrd milestones. Debian's initrd has no EROFS or dm-verity
/// module, so it cannot mount this root; it is timed to "Mounting root file system".
#[test]
#[ignore]
fn measure_initrd_handoff() {
    let img = rke2_qemu_tests::need!(image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("measure.qcow2"));
    built::overlay_disk(&img.disk, &disk, None).unwrap();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // First boot creates state (run to completion so it is on disk); the second is the
    // steady state we time.
    let first = boot_to_probe_unlocked(&disk, direct(img), "measure-1");
    println!(
        "rke2-init first boot: multi-user (probe start) at {} s guest uptime",
        first.facts.get("uptime").map(String::as_str).unwrap_or("?")
    );
    let mut vm = Vm::start(&Config::new(&disk, direct(img))).unwrap();
    let wall = vm
        .wait_for("SELinux:  policy capability", &FATAL, BOOT_TIMEOUT)
        .unwrap();
    let c = vm.console();
    println!(
        "rke2-init: initrd {} bytes; Run /init at {:?} s, verity root at {:?} s, hand-off at {:?} s, policy load at {:?} s (kernel clock); {:.1} s after QEMU start",
        img.manifest.boot.initrd_size,
        stamp(&c, "Run /init"),
        stamp(&c, "rke2-init: verity root"),
        stamp(&c, "rke2-init: handing off"),
        stamp(&c, "SELinux:  policy capability"),
        wall.as_secs_f64()
    );
    assert!(c.contains("state: mounted existing"));
    drop(vm);
    // Debian's initramfs-tools initrd of the same kernel, if the base carries one (the lean
    // base `rke2-image base` builds has none: it replaces initramfs-tools).
    let base = std::env::var("RKE2_TEST_BASE").unwrap();
    let kver = &img.manifest.boot.kernel_version;
    let debian = work_dir().join("debian-initrd.img");
    let got = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "tar -xOf '{base}' ./boot/initrd.img-{kver} > '{}'",
                debian.display()
            ),
        ])
        .status()
        .unwrap();
    if !got.success() || std::fs::metadata(&debian).map(|m| m.len()).unwrap_or(0) == 0 {
        println!("base has no boot/initrd.img-{kver}: Debian initrd comparison skipped");
        return;
    }
    let size = std::fs::metadata(&debian).unwrap().len();
    let boot = Boot::Direct {
        kernel: img.kernel.clone(),
        initrd: debian,
        cmdline: "console=ttyS0,115200 root=/dev/vda2 rootfstype=erofs ro rootdelay=1 fips=1 security=selinux selinux=1 enforcing=1".into(),
    };
    let mut vm = Vm::start(&Config::new(&disk, boot)).unwrap();
    let run_init = vm
        .wait_for("Run /init", &["Kernel panic"], BOOT_TIMEOUT)
        .unwrap();
    let mounting = vm
        .wait_for("Mounting root file system", &["Kernel panic"], BOOT_TIMEOUT)
        .unwrap();
    let c = vm.console();
    println!(
        "debian initramfs-tools: initrd {size} bytes; Run /init at {:?} s (kernel clock), {:.1} s after QEMU start; \"Mounting root file system\" {:.1} s after QEMU start",
        stamp(&c, "Run /init"),
        run_init.as_secs_f64(),
        mounting.as_secs_f64()
    );
}

/// Where the LZ4HC-root image is built (its own directory: `image()` owns `built`).
fn lz4hc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("built-lz4hc")
}

/// The test image with `rootfs.compression: lz4hc`, built once per test run.
fn lz4hc_image() -> Option<&'static Image> {
    static IMG: OnceLock<Option<Image>> = OnceLock::new();
    IMG.get_or_init(|| {
        let (base, programs) = rke2_qemu_tests::test_inputs()?;
        let start = std::time::Instant::now();
        let img = built::build(
            &base,
            &programs,
            &lz4hc_dir(),
            "rootfs:\n  compression: lz4hc\n",
        )
        .expect("building the lz4hc test image");
        eprintln!(
            "built {} in {:.0} s",
            img.disk.display(),
            start.elapsed().as_secs_f64()
        );
        Some(img)
    })
    .as_ref()
}

/// Just enough of an EROFS reader (on-disk format of Linux 6.1) to find a file's inode and
/// its first compressed physical cluster in a root partition, independently of the writer.
struct ErofsRoot {
    f: std::fs::File,
    base: u64,
}

struct ErofsInode {
    at: u64,
    layout: u16,
    size: u64,
    i_u: u32,
    /// Inode core + inline xattrs.
    ibody: u64,
}

impl ErofsRoot {
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        self.f.read_exact_at(&mut b, self.base + off).unwrap();
        b
    }

    fn u16(&self, off: u64) -> u16 {
        u16::from_le_bytes(self.read(off, 2).try_into().unwrap())
    }

    fn u32(&self, off: u64) -> u32 {
        u32::from_le_bytes(self.read(off, 4).try_into().unwrap())
    }

    fn inode(&self, nid: u64) -> ErofsInode {
        let at = nid * 32;
        let format = self.u16(at);
        let extended = format & 1 == 1;
        let icount = u64::from(self.u16(at + 2));
        let xattrs = if icount == 0 {
            0
        } else {
            12 + 4 * (icount - 1)
        };
        let size = if extended {
            u64::from_le_bytes(self.read(at + 8, 8).try_into().unwrap())
        } else {
            u64::from(self.u32(at + 8))
        };
        ErofsInode {
            at,
            layout: (format >> 1) & 7,
            size,
            i_u: self.u32(at + 16),
            ibody: if extended { 64 } else { 32 } + xattrs,
        }
    }

    /// Uncompressed contents of a directory (FLAT_PLAIN or FLAT_INLINE).
    fn dir_bytes(&self, d: &ErofsInode) -> Vec<u8> {
        let whole = if d.layout == 2 {
            d.size / 4096
        } else {
            d.size.div_ceil(4096)
        };
        let mut out = self.read(u64::from(d.i_u) * 4096, (whole * 4096) as usize);
        if d.layout == 2 {
            out.extend(self.read(d.at + d.ibody, (d.size - whole * 4096) as usize));
        }
        out.truncate(d.size as usize);
        out
    }

    fn lookup(&self, path: &str) -> ErofsInode {
        let root_nid = u64::from(self.u16(1024 + 14));
        let mut nid = root_nid;
        for name in path.split('/') {
            let d = self.inode(nid);
            let data = self.dir_bytes(&d);
            let mut found = None;
            for block in data.chunks(4096) {
                let n = usize::from(u16::from_le_bytes([block[8], block[9]])) / 12;
                for k in 0..n {
                    let e = &block[k * 12..k * 12 + 12];
                    let off = usize::from(u16::from_le_bytes([e[8], e[9]]));
                    let end = if k + 1 < n {
                        usize::from(u16::from_le_bytes([block[k * 12 + 20], block[k * 12 + 21]]))
                    } else {
                        block.len()
                    };
                    let nm = &block[off..end];
                    let nm = &nm[..nm.iter().position(|&c| c == 0).unwrap_or(nm.len())];
                    if nm == name.as_bytes() {
                        found = Some(u64::from_le_bytes(e[..8].try_into().unwrap()));
                    }
                }
            }
            nid = found.unwrap_or_else(|| panic!("{path}: {name} not found in the root"));
        }
        self.inode(nid)
    }

    /// Block of the first HEAD (LZ4-compressed) pcluster among a compressed file's first
    /// compact index pack: the pack's stored base plus one per HEAD/PLAIN entry up to it.
    fn first_compressed_block(&self, ino: &ErofsInode) -> u64 {
        assert_eq!(ino.layout, 3, "not a compressed (compact index) inode");
        let ebase = ino.at + ino.ibody.next_multiple_of(8) + 8;
        let total = ino.size.div_ceil(4096);
        let initial = match (32 - ebase % 32) / 4 {
            8 => 0,
            n => n,
        };
        let (unit, vcnt, bits) = if initial > 0 || total < 16 {
            (4u64, 2u64, 16u64)
        } else {
            (2, 16, 14)
        };
        let pack = self.read(ebase, (unit * vcnt) as usize);
        let stored = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap());
        let mut heads = 0u64;
        for i in 0..vcnt.min(total) {
            let pos = (bits * i) as usize;
            let v = u32::from_le_bytes(pack[pos / 8..pos / 8 + 4].try_into().unwrap_or([0; 4]))
                >> (pos & 7);
            match (v >> 12) & 3 {
                1 => return u64::from(stored) + heads + 1,
                0 => heads += 1,
                _ => {}
            }
        }
        panic!("no compressed pcluster in the first index pack");
    }
}

#[test]
fn lz4hc_root_boots_verified_and_reads_every_file() {
    let img = rke2_qemu_tests::need!(lz4hc_image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(lz4hc_dir().join("boot.qcow2"));
    built::overlay_disk(&img.disk, &disk, None).unwrap();
    // Read from the built image itself (the overlay below it is the VM's).
    let root = ErofsRoot {
        f: std::fs::File::open(&img.disk).unwrap(),
        base: img.root_part.0,
    };
    // The root really is compressed: LZ4_0PADDING set, PID 1's binary stored compressed.
    assert_eq!(root.u32(1024), 0xE0F5_E1E2);
    assert_eq!(root.u32(1024 + 80), 1, "feature_incompat");
    assert_eq!(root.lookup("usr/lib/systemd/systemd").layout, 3);
    let knob = lz4hc_dir().join("readall.knob");
    std::fs::write(&knob, "1").unwrap();
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.fw_cfg = vec![(
        format!("{}/readall", rke2_qemu_tests::cluster::FW_CFG_TEST),
        knob,
    )];
    let b = {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        boot_to_probe_cfg(cfg, "lz4hc-uefi")
    };
    check_default_boot(&b);
    let files: u64 = fact(&b, "readall_files").parse().unwrap();
    assert!(files > 5000, "only {files} files on the root");
    assert_eq!(
        fact(&b, "readall_errors"),
        "0",
        "read errors: {}",
        fact(&b, "readall_first_errors")
    );
    assert!(!b.console.contains("is corrupted"));
    eprintln!(
        "lz4hc root: {files} files read in {} s in the guest ({}), 0 errors; EROFS {} bytes",
        fact(&b, "readall_secs"),
        accel(),
        u64::from(root.u32(1024 + 36)) * 4096
    );
}

#[test]
fn lz4hc_root_with_flipped_compressed_byte_is_refused() {
    let img = rke2_qemu_tests::need!(lz4hc_image());
    let mut scratch = Scratch::new();
    let disk = scratch.add(lz4hc_dir().join("flipped.raw"));
    built::copy_disk(&img.disk, &disk, None).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let root = ErofsRoot {
        f: f.try_clone().unwrap(),
        base: img.root_part.0,
    };
    // A byte of LZ4 data (0-padding puts it at the end of the block) in the first compressed
    // pcluster of systemd, which the kernel reads to exec PID 1.
    let blk = root.first_compressed_block(&root.lookup("usr/lib/systemd/systemd"));
    let off = img.root_part.0 + blk * 4096 + 4095;
    {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, off).unwrap();
    }
    drop(f);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.log = Some(lz4hc_dir().join("flipped.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for(
        "is corrupted",
        &["RKE2-PROBE", "Reached target"],
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("flipped byte at block {blk}: {e}\n{}", vm.tail()));
    // Whatever follows (rke2-init's failure path or a panic), the system must not come up.
    let _ = vm.wait_exit(Duration::from_secs(120));
    let c = vm.console();
    assert!(!c.contains("RKE2-PROBE"), "{}", vm.tail());
    assert!(!c.contains("Reached target"), "{}", vm.tail());
    // rke2-init's exec of PID 1 gets the I/O error (seen: "executing: /sbin/init: I/O error").
    assert!(c.contains("rke2-init: FAILED"), "{}", vm.tail());
}
