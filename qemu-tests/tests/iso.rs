//! Live boot of the `iso` output through OVMF: from a virtual CD-ROM drive (El Torito EFI boot
//! image; the guest sees `sr0`, which has no partition devices) and from the same ISO attached
//! as a plain virtio disk (as after `dd` to a USB stick; the firmware boots the GPT's ESP). Both
//! must reach the probe with the root read from the medium through dm-linear + dm-verity, FIPS
//! and SELinux enforcing, and state in RAM. A medium whose root was damaged, or no medium at
//! all, stops in rke2-init with the reason. A copy customized with `rke2-image iso customize`
//! configures itself from the embedded cluster file, with no other configuration source.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rke2_qemu_tests::built::{self, Image};
use rke2_qemu_tests::probe;
use rke2_qemu_tests::vm::{accel, Boot, Config, Net, Nic, Vm};
use rke2_testsupport::scratch::Scratch;

/// Generous: TCG on a shared 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];

/// One VM at a time: the machines these run on have few cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("iso")
}

/// The pipeline-built image with its ISO, built once per test run; None (test skipped, or
/// failed under CI/RKE2_TEST_STRICT) without a base or xorriso.
fn image() -> Option<&'static Image> {
    static IMG: OnceLock<Option<Image>> = OnceLock::new();
    let (base, programs) = rke2_qemu_tests::test_inputs()?;
    if !rke2_testsupport::prereq::program("xorriso", "xorriso")
        || !rke2_testsupport::prereq::program("qemu-io", "qemu-utils")
    {
        return None;
    }
    IMG.get_or_init(|| {
        let start = std::time::Instant::now();
        let img = built::build_formats(&base, &programs, &work_dir(), "", "raw,iso")
            .expect("building the test image with the iso output");
        let iso = img.iso.as_ref().expect("the build published no .iso");
        eprintln!(
            "built {} in {:.0} s; iso {} MiB",
            img.disk.display(),
            start.elapsed().as_secs_f64(),
            std::fs::metadata(iso).unwrap().len() >> 20
        );
        Some(img)
    })
    .as_ref()
}

fn fact<'a>(facts: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    facts
        .get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("probe fact {k} missing; facts: {facts:?}"))
}

/// Boots `cfg` to the probe; returns the console and the seconds from QEMU start to
/// rke2-init's hand-off and to the probe.
fn boot_to_probe(cfg: &Config, what: &str) -> (String, f64, f64) {
    let mut vm = Vm::start(cfg).unwrap();
    let probe_at = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what} ({}): {e}", accel()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let handoff = vm
        .seen_at("rke2-init: handing off to /sbin/init")
        .unwrap()
        .as_secs_f64();
    (vm.console(), handoff, probe_at.as_secs_f64())
}

/// What every live boot from the medium shows: the root from `medium` through dm-linear and
/// dm-verity, FIPS, SELinux enforcing, state in RAM, the live command line.
fn check_live(img: &Image, console: &str, medium: &str) {
    assert!(
        console.contains(&format!("rke2-init: boot medium {medium} (")),
        "rke2-init did not find the root on {medium}"
    );
    let facts = probe::facts(console);
    assert_eq!(fact(&facts, "root_fstype"), "erofs");
    assert!(fact(&facts, "root_dm_name").starts_with("rke2-root-a"));
    assert!(fact(&facts, "root_dm_uuid").starts_with("RKE2-VERITY-"));
    // dm-verity over the two dm-linear maps of the medium.
    assert!(fact(&facts, "root_dm_slaves").contains("dm-"), "{facts:?}");
    assert_eq!(fact(&facts, "root_writable"), "0");
    assert_eq!(fact(&facts, "fips"), "1");
    assert_eq!(fact(&facts, "selinux_enforce"), "1");
    assert!(console.contains("fips mode: enabled"));
    assert_eq!(fact(&facts, "fstype:/etc"), "overlay");
    assert_eq!(fact(&facts, "fstype:/var"), "ext4");
    assert!(console.contains("rke2-init: state: RAM (/dev/loop"));
    assert!(fact(&facts, "label:/var").contains(":var_t:"), "{facts:?}");
    let ours = probe::our_denials(console);
    assert!(ours.is_empty(), "AVC denials for our components: {ours:#?}");
    assert!(console.contains(&format!("rke2.roothash={}", img.manifest.verity.root_hash)));
    assert!(console.contains("rke2.root=iso"));
}

/// The ISO in a virtual CD-ROM drive: OVMF boots its El Torito EFI image; rke2-init finds the
/// root on `sr0` by reading the ISO 9660 directory. Then the raw disk, for the timing.
#[test]
fn iso_on_cdrom_boots_live_with_verified_root() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let iso = img.iso.as_ref().unwrap();
    let mut cfg = Config::new(iso, Boot::Cdrom);
    cfg.log = Some(work_dir().join("cdrom.console.log"));
    let (console, handoff, probe_at) = boot_to_probe(&cfg, "ISO on a CD-ROM");
    check_live(img, &console, "/dev/sr0");
    // The same image from its raw disk (a qcow2 overlay), for the timing comparison.
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("raw.qcow2"));
    built::overlay_disk(&img.disk, &disk, None).unwrap();
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.log = Some(work_dir().join("raw.console.log"));
    let (_, raw_handoff, raw_probe) = boot_to_probe(&cfg, "raw disk");
    eprintln!(
        "ISO on CD-ROM: rke2-init hand-off {handoff:.1} s, probe {probe_at:.1} s after QEMU start; raw disk: {raw_handoff:.1} s, {raw_probe:.1} s ({})",
        accel()
    );
}

/// One rack: the built ISO plus a cluster file embedded with `rke2-image iso customize`, booted
/// from the CD-ROM with no fw_cfg configuration, config drive or URL. The agent finds the file
/// in the embed area of `sr0` (the medium under the root's dm-linear map), picks this machine's
/// entry by its MAC (the other entry is another machine's) and completes the first boot.
#[test]
fn customized_iso_configures_itself_from_the_embedded_file() {
    let img = rke2_qemu_tests::need!(image());
    let (_, programs) = rke2_qemu_tests::need!(rke2_qemu_tests::test_inputs());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut scratch = Scratch::new();
    let config = scratch.add(work_dir().join("rack.yaml"));
    let custom = scratch.add(work_dir().join("rack.iso"));
    let mac = "52:54:00:e2:0b:01";
    std::fs::write(
        &config,
        format!(
            "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  token: rack-cluster-password-11\nnodes:\n  - hostname: rack-cp-1\n    match: {{ mac: \"{mac}\" }}\n    role: server\n    initializer: true\n    address: 10.0.0.11\n    network:\n      addresses: [10.0.0.11/24]\n  - hostname: rack-worker-1\n    match: {{ mac: \"52:54:00:e2:0b:02\" }}\n    role: agent\n    network:\n      addresses: [10.0.0.21/24]\n"
        ),
    )
    .unwrap();
    built::run(
        Command::new(programs.join("rke2-image"))
            .args(["iso", "customize"])
            .arg(img.iso.as_ref().unwrap())
            .arg("--config")
            .arg(&config)
            .arg("-o")
            .arg(&custom),
    )
    .unwrap();
    let mut cfg = Config::new(&custom, Boot::Cdrom);
    // A NIC only for its MAC (the role is chosen by it): isolated user networking.
    cfg.nics = vec![Nic {
        mac: mac.into(),
        net: Net::User {
            forwards: Vec::new(),
        },
    }];
    cfg.log = Some(work_dir().join("customized.console.log"));
    let (console, _, probe_at) = boot_to_probe(&cfg, "customized ISO on a CD-ROM");
    check_live(img, &console, "/dev/sr0");
    assert!(
        console.contains("rke2-firstboot: configuration from /rke2/config.img on /dev/sr0"),
        "the agent did not take the embedded configuration"
    );
    assert!(console.contains("role: server (initializer)"));
    let facts = probe::facts(&console);
    assert!(
        fact(&facts, "fb_status").starts_with("first boot completed"),
        "{facts:?}"
    );
    assert_eq!(fact(&facts, "hostname"), "rack-cp-1");
    assert!(
        fact(&facts, "addrs")
            .split(' ')
            .any(|a| a == "10.0.0.11/24"),
        "{facts:?}"
    );
    eprintln!(
        "customized ISO: configured from the embedded file, probe {probe_at:.1} s after QEMU start ({})",
        accel()
    );
}

/// The same ISO as a plain virtio disk (what `dd` to a USB stick gives): OVMF boots the ESP
/// the GPT publishes; rke2-init finds the root on the whole disk `vda`.
#[test]
fn iso_as_a_disk_boots_live_with_verified_root() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("usb.qcow2"));
    built::overlay_disk(img.iso.as_ref().unwrap(), &disk, None).unwrap();
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.log = Some(work_dir().join("usb.console.log"));
    let (console, handoff, probe_at) = boot_to_probe(&cfg, "ISO as a virtio disk");
    check_live(img, &console, "/dev/vda");
    eprintln!(
        "ISO as a disk: rke2-init hand-off {handoff:.1} s, probe {probe_at:.1} s after QEMU start ({})",
        accel()
    );
}

/// Byte offset of `path` on the ISO, from xorriso's own report (an oracle independent of
/// rke2-init's reader): `File data lba: 0 , <lba> , <blocks> , <size> , <path>`.
fn file_offset(iso: &Path, path: &str) -> u64 {
    let out = built::run(Command::new("xorriso").args([
        "-no_rc",
        "-indev",
        iso.to_str().unwrap(),
        "-find",
        path,
        "-exec",
        "report_lba",
    ]))
    .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("File data lba:"))
        .unwrap_or_else(|| panic!("no report_lba line: {text}"));
    let lba: u64 = line.split(',').nth(1).unwrap().trim().parse().unwrap();
    lba * 2048
}

/// One flipped bit in the root's EROFS superblock block on the medium (through a qcow2
/// overlay, the ISO stays intact): rke2-init stops with the reason, never boots unverified.
#[test]
fn iso_with_a_damaged_root_stops_in_rke2_init() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let iso = img.iso.as_ref().unwrap();
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("damaged.qcow2"));
    built::overlay_disk(iso, &disk, None).unwrap();
    let at = file_offset(iso, "/rke2/root.img") + 1024 + 16;
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(iso).unwrap(), &mut b, at)
        .unwrap();
    built::run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        &format!("write -P {} {at} 1", b[0] ^ 0x10),
        disk.to_str().unwrap(),
    ]))
    .unwrap();
    let mut cfg = Config::new(&disk, Boot::Uefi);
    cfg.log = Some(work_dir().join("damaged.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    let failed = vm
        .wait_line(
            "rke2-init: FAILED",
            &["handing off to /sbin/init"],
            BOOT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("damaged ISO root ({}): {e}", accel()));
    drop(vm);
    assert!(
        failed.contains("the medium's root does not match rke2.roothash"),
        "{failed}"
    );
    eprintln!("damaged medium: {failed}");
}

/// `rke2.root=iso` with no medium attached (a blank disk only; the kernel and initrd loaded by
/// QEMU): rke2-init waits `rke2.device_timeout`, then stops naming each device and why.
#[test]
fn iso_root_without_a_medium_stops_naming_each_device() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut scratch = Scratch::new();
    let blank = scratch.add(work_dir().join("blank.raw"));
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut cfg = Config::new(
        &blank,
        Boot::Direct {
            kernel: img.kernel.clone(),
            initrd: img.initrd.clone(),
            cmdline: format!("{} rke2.root=iso rke2.device_timeout=5", img.cmdline),
        },
    );
    cfg.log = Some(work_dir().join("no-medium.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    let failed = vm
        .wait_line(
            "rke2-init: FAILED",
            &["handing off to /sbin/init"],
            BOOT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("no medium ({}): {e}", accel()));
    drop(vm);
    assert!(failed.contains("finding the boot medium"), "{failed}");
    assert!(
        failed.contains("/dev/vda: no ISO 9660 volume descriptor at 32 KiB"),
        "{failed}"
    );
    assert!(failed.contains("(waited 5 s)"), "{failed}");
    eprintln!("no medium: {failed}");
}

/// A sparse raw file of `size` bytes (a blank virtio disk).
fn blank_disk(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// `sha256sum` of a file (the refusal tests' "nothing written" oracle).
fn sha256(path: &Path) -> String {
    let out = built::run(Command::new("sha256sum").arg(path)).unwrap();
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The native configuration through fw_cfg (the first-boot agent's `fw_cfg` source).
fn config_file(path: &Path, body: &str) -> (String, PathBuf) {
    std::fs::write(
        path,
        format!("apiVersion: rke2-image/v1\nkind: NodeConfig\n{body}"),
    )
    .unwrap();
    (
        rke2_qemu_tests::cluster::FW_CFG_CONFIG.into(),
        path.to_path_buf(),
    )
}

fn table(path: &Path) -> rke2_image_contract::gpt::Table {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    rke2_image_contract::gpt::Table::read(&f, size, 512).unwrap()
}

/// Unattended install from the CD onto an empty virtio disk (`install:` in the configuration,
/// `then: poweroff`), then a boot from that disk alone: verity root, FIPS, SELinux enforcing,
/// the state partition created; the installed GPT is the raw image's (same disk GUID and
/// partitions, backup at the disk's end: `sgdisk -v`).
#[test]
fn iso_installs_onto_an_empty_disk_which_then_boots_alone() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let iso = img.iso.as_ref().unwrap();
    let mut scratch = Scratch::new();
    let target = scratch.add(work_dir().join("install-target.raw"));
    let raw_size = std::fs::metadata(&img.disk).unwrap().len();
    blank_disk(&target, raw_size + (512 << 20));
    let conf = scratch.add(work_dir().join("install.yaml"));
    let mut cfg = Config::new(iso, Boot::Cdrom);
    cfg.fw_cfg.push(config_file(
        &conf,
        "hostname: installed\ninstall:\n  target: auto\n  then: poweroff\n",
    ));
    cfg.rw_drives.push(target.clone());
    cfg.log = Some(work_dir().join("install.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for("rke2-install: done; poweroff", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("install from the CD ({}): {e}", accel()));
    vm.wait_exit(Duration::from_secs(300)).unwrap();
    let console = vm.console();
    drop(vm);
    assert!(console.contains("rke2-install: installation medium /dev/sr0"));
    assert!(console.contains("rke2-install: installing onto /dev/vda"));
    let wrote = console
        .lines()
        .find(|l| l.contains("rke2-install: INSTALLED onto /dev/vda (written: true"))
        .unwrap_or_else(|| panic!("no INSTALLED line"));
    // The menu's default stayed the live entry (the install came from the configuration).
    let cmdline = console
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c))
        .unwrap();
    assert!(
        cmdline.contains("rke2.root=iso") && !cmdline.contains("rke2.install"),
        "{cmdline}"
    );
    // The first-boot agent did not configure the live system.
    assert!(!console.contains("rke2-firstboot: done"));

    // The installed table is the raw image's, moved to the larger disk's end.
    let (got, want) = (table(&target), table(&img.disk));
    assert_eq!(got.disk_guid, want.disk_guid);
    assert_eq!(got.entries, want.entries);
    assert_eq!(got.disk_sectors * 512, raw_size + (512 << 20));
    let v = built::run(Command::new("sgdisk").arg("-v").arg(&target)).unwrap();
    assert!(
        String::from_utf8_lossy(&v).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&v)
    );

    // The measure for the integrator's note: the bytes the installer wrote (head, ESP in use,
    // root, hash tree) against dd of the same number of bytes on the host, and against the raw
    // image a plain `dd` install would write whole. The guest runs under TCG.
    let written: u64 = wrote
        .split("written: true, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {wrote}"));
    let dd_target = scratch.add(work_dir().join("dd-target.raw"));
    let t = std::time::Instant::now();
    built::run(Command::new("dd").args([
        &format!("if={}", img.disk.display()),
        &format!("of={}", dd_target.display()),
        "bs=1M",
        &format!("count={}", written.div_ceil(1 << 20)),
        "conv=fsync",
        "status=none",
    ]))
    .unwrap();
    let dd_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&dd_target).unwrap();
    eprintln!(
        "install: {} ({} guest); host dd of the same {} MiB: {dd_secs:.1} s; a dd install \
         writes the whole raw image: {} MiB",
        wrote.split("rke2-install: ").nth(1).unwrap_or(wrote).trim(),
        accel(),
        written >> 20,
        raw_size >> 20
    );
    let ours = probe::our_denials(&console);
    assert!(
        ours.is_empty(),
        "AVC denials for our components while installing: {ours:#?}"
    );

    // The installed disk alone (no CD, no configuration).
    let mut cfg = Config::new(&target, Boot::Uefi);
    cfg.log = Some(work_dir().join("installed.console.log"));
    let (console, _, probe_at) = boot_to_probe(&cfg, "the installed disk");
    let facts = probe::facts(&console);
    assert_eq!(fact(&facts, "root_fstype"), "erofs");
    assert!(fact(&facts, "root_dm_name").starts_with("rke2-root-a"));
    assert!(fact(&facts, "root_dm_uuid").starts_with("RKE2-VERITY-"));
    assert_eq!(fact(&facts, "fips"), "1");
    assert_eq!(fact(&facts, "selinux_enforce"), "1");
    assert!(
        fact(&facts, "state_source").starts_with("/dev/vda"),
        "{facts:?}"
    );
    assert!(!fact(&facts, "state_stamp").is_empty(), "{facts:?}");
    assert!(!console.contains("rke2.root=iso"));
    let ours = probe::our_denials(&console);
    assert!(ours.is_empty(), "AVC denials for our components: {ours:#?}");
    let after = table(&target);
    assert!(
        after.get(6).is_some_and(|e| e.name == "state"),
        "no state partition"
    );
    eprintln!(
        "installed disk: probe {probe_at:.1} s after QEMU start ({})",
        accel()
    );
}

/// The refusals, in one boot: `auto` with a partitioned disk (no `wipe`), two blank disks and
/// the boot medium attached stops with one message listing each candidate and why (the
/// partitioned disk: partitions without wipe; the CD: the boot medium; the two blank disks:
/// ambiguous), and writes nothing (every disk's checksum unchanged).
#[test]
fn iso_install_refusals_write_nothing() {
    let img = rke2_qemu_tests::need!(image());
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let iso = img.iso.as_ref().unwrap();
    let mut scratch = Scratch::new();
    let raw_size = std::fs::metadata(&img.disk).unwrap().len();
    let size = raw_size + (64 << 20);
    let disks: Vec<PathBuf> = ["refuse-gpt.raw", "refuse-a.raw", "refuse-b.raw"]
        .iter()
        .map(|n| scratch.add(work_dir().join(n)))
        .collect();
    for d in &disks {
        blank_disk(d, size);
    }
    built::run(
        Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+16M"])
            .arg(&disks[0]),
    )
    .unwrap();
    let before: Vec<String> = disks.iter().map(|d| sha256(d)).collect();
    let iso_before = sha256(iso);
    let conf = scratch.add(work_dir().join("refuse.yaml"));
    let mut cfg = Config::new(iso, Boot::Cdrom);
    cfg.fw_cfg.push(config_file(
        &conf,
        "install:\n  target: auto\n  then: poweroff\n",
    ));
    cfg.rw_drives = disks.clone();
    cfg.log = Some(work_dir().join("refuse.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for("rke2-install: stopped;", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("install refusal ({}): {e}", accel()));
    std::thread::sleep(Duration::from_secs(2));
    let console = vm.console();
    drop(vm);
    let failed = console
        .split("rke2-install: FAILED: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no FAILED line"));
    let failed: String = failed
        .lines()
        .take_while(|l| !l.contains("rke2-install: stopped;"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        failed.contains("2 disks qualify; refusing to guess"),
        "{failed}"
    );
    let line = |dev: &str| {
        failed
            .lines()
            .find(|l| l.contains(dev))
            .unwrap_or_else(|| panic!("{dev} not listed: {failed}"))
            .to_string()
    };
    assert!(
        line("/dev/vda ").contains("it has partitions (vda1)"),
        "{failed}"
    );
    assert!(
        line("/dev/sr0 ").contains("it is the medium this system booted from"),
        "{failed}"
    );
    for d in ["/dev/vdb ", "/dev/vdc "] {
        assert!(line(d).contains("qualifies (ambiguous"), "{failed}");
    }
    let after: Vec<String> = disks.iter().map(|d| sha256(d)).collect();
    assert_eq!(before, after, "a refused install wrote to a disk");
    assert_eq!(iso_before, sha256(iso));
    eprintln!("install refusals:\n{failed}");
}
