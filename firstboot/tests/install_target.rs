//! Install target selection over fake sysfs and `/dev` trees shaped after real QEMU guests
//! (virtio-blk with `serial`, NVMe with `wwid`, a SCSI LUN reached over two paths under
//! dm-multipath, a USB stick, an IDE CD-ROM), with signatures written by the real tools
//! (sgdisk, sfdisk, mkfs.ext4, mkfs.fat, mkfs.erofs).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_firstboot::install::target::{self, Disk, Inputs, Kind, TargetError, SIGNATURES};
use rke2_firstboot::install::{request, InstallRequest, TargetSpec};
use rke2_testsupport::prereq;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

/// A fake `/sys` + `/dev` in a temporary directory (under cargo's target tmpdir, removed on
/// drop).
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        fs::create_dir_all(dir.path().join("sys/class/block")).unwrap();
        fs::create_dir_all(dir.path().join("dev/disk/by-id")).unwrap();
        Tree { dir }
    }
    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }
    /// The disk's sysfs directory (via the class link).
    fn sysdir(&self, name: &str) -> PathBuf {
        self.sys().join("class/block").join(name)
    }
    /// The device node, a sparse file of the disk's size.
    fn node(&self, name: &str) -> PathBuf {
        self.dev().join(name)
    }

    /// A whole disk at `devices/<devpath>/<name>` with `/sys/class/block/<name>` linking to it
    /// (relative, as the kernel does), attributes relative to its directory, and `/dev/<name>`.
    fn disk(&self, devpath: &str, name: &str, dev: &str, size: u64, attrs: &[(&str, &str)]) {
        let real = self.sys().join("devices").join(devpath).join(name);
        fs::create_dir_all(real.join("holders")).unwrap();
        fs::create_dir_all(real.join("queue")).unwrap();
        let mut all = vec![
            ("size", (size / 512).to_string()),
            ("dev", dev.to_string()),
            ("ro", "0".into()),
            ("removable", "0".into()),
            ("queue/logical_block_size", "512".into()),
        ];
        all.extend(attrs.iter().map(|(k, v)| (*k, v.to_string())));
        for (k, v) in all {
            let p = real.join(k);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("{v}\n")).unwrap();
        }
        symlink(format!("../../devices/{devpath}/{name}"), self.sysdir(name)).unwrap();
        let f = fs::File::create(self.node(name)).unwrap();
        f.set_len(size).unwrap();
    }

    /// Partition `part` (number `n`) of `disk`, as a subdirectory of the disk's directory.
    fn part(&self, disk: &str, part: &str, n: u32, dev: &str) {
        let real = fs::canonicalize(self.sysdir(disk)).unwrap().join(part);
        fs::create_dir_all(real.join("holders")).unwrap();
        fs::write(real.join("partition"), format!("{n}\n")).unwrap();
        fs::write(real.join("dev"), format!("{dev}\n")).unwrap();
        symlink(&real, self.sysdir(part)).unwrap();
    }

    /// `holder` (a dm device) holds `of` (a disk or partition directory).
    fn holder(&self, of: &str, holder: &str) {
        let held = match fs::canonicalize(self.sysdir(of)) {
            Ok(p) => p,
            Err(_) => panic!("no {of}"),
        };
        symlink(self.sysdir(holder), held.join("holders").join(holder)).unwrap();
    }

    fn by_id(&self, link: &str, target: &str) {
        symlink(
            format!("../../{target}"),
            self.dev().join("disk/by-id").join(link),
        )
        .unwrap();
    }

    fn inputs<'a>(&'a self, sys: &'a Path, dev: &'a Path, mountinfo: &'a str) -> Inputs<'a> {
        Inputs {
            sys,
            dev,
            mountinfo,
            boot_device: None,
            image_size: 16 * MIB,
        }
    }
}

/// The standard guest: vda (virtio, serial), nvme0n1 (wwid), sda+sdb (two paths of one SCSI
/// LUN) under dm-0 (`mpatha`), sdc (USB stick), sr0 (CD-ROM with a medium). All blank.
fn guest() -> Tree {
    let t = Tree::new();
    t.disk(
        "pci0000:00/0000:00:04.0/virtio1/block",
        "vda",
        "254:0",
        SIZE,
        &[("serial", "VDA-SERIAL-1")],
    );
    t.by_id("virtio-VDA-SERIAL-1", "vda");
    t.disk(
        "pci0000:00/0000:00:05.0/nvme/nvme0",
        "nvme0n1",
        "259:0",
        2 * SIZE,
        &[
            ("wwid", "eui.0025385b71b0a8d2"),
            ("device/serial", "NVME0001"),
            ("device/model", "QEMU NVMe Ctrl"),
        ],
    );
    t.by_id("nvme-QEMU_NVMe_Ctrl_NVME0001", "nvme0n1");
    t.by_id("nvme-eui.0025385b71b0a8d2", "nvme0n1");
    // The same LUN on two paths: same wwid and serial (VPD page 0x80).
    let pg80 = |s: &str| {
        let mut v = vec![0u8, 0x80, 0, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    for (n, name, dev) in [(0, "sda", "8:0"), (1, "sdb", "8:16")] {
        t.disk(
            &format!("pci0000:00/0000:00:06.0/virtio2/host0/target0:0:{n}/0:0:{n}:0/block"),
            name,
            dev,
            4 * SIZE,
            &[
                ("device/wwid", "naa.5000c50015ea71ad"),
                ("device/model", "QEMU HARDDISK"),
            ],
        );
        fs::write(
            fs::canonicalize(t.sysdir(name))
                .unwrap()
                .join("device/vpd_pg80"),
            pg80("LUN-SERIAL-9"),
        )
        .unwrap();
    }
    t.disk(
        "virtual/block",
        "dm-0",
        "253:0",
        4 * SIZE,
        &[
            ("dm/name", "mpatha"),
            ("dm/uuid", "mpath-35000c50015ea71ad"),
        ],
    );
    fs::create_dir_all(t.sysdir("dm-0").join("slaves")).unwrap();
    for p in ["sda", "sdb"] {
        t.holder(p, "dm-0");
        symlink(t.sysdir(p), t.sysdir("dm-0").join("slaves").join(p)).unwrap();
    }
    fs::create_dir_all(t.dev().join("mapper")).unwrap();
    symlink("../dm-0", t.dev().join("mapper/mpatha")).unwrap();
    t.by_id("wwn-0x5000c50015ea71ad", "sda");
    t.by_id("dm-uuid-mpath-35000c50015ea71ad", "dm-0");
    t.disk(
        "pci0000:00/0000:00:07.0/usb1/1-1/1-1:1.0/host2/target2:0:0/2:0:0:0/block",
        "sdc",
        "8:32",
        SIZE,
        &[
            ("removable", "1"),
            ("device/model", "QEMU USB HARDDRIVE"),
            ("device/vpd_pg80", ""),
        ],
    );
    t.by_id("usb-QEMU_QEMU_USB_HARDDRIVE_1-0000:00:07.0-1-0:0", "sdc");
    t.disk(
        "pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0/block",
        "sr0",
        "11:0",
        SIZE,
        &[("removable", "1"), ("device/model", "QEMU DVD-ROM")],
    );
    // An unused loop device: size 0, not listed.
    t.disk("virtual/block", "loop0", "7:0", 0, &[]);
    t
}

fn req(spec: &str, wipe: bool) -> InstallRequest {
    InstallRequest {
        target: TargetSpec::parse("install.target", spec).unwrap(),
        target_key: "install.target".into(),
        wipe,
        min_size: None,
        max_size: None,
        then: Default::default(),
    }
}

fn select(t: &Tree, spec: &str, wipe: bool) -> Result<Disk, TargetError> {
    let (s, d) = (t.sys(), t.dev());
    target::select(&req(spec, wipe), &t.inputs(&s, &d, ""))
}

fn refused(t: &Tree, spec: &str, wipe: bool) -> String {
    match select(t, spec, wipe) {
        Ok(d) => panic!("{spec}: selected {}", d.path()),
        Err(e) => e.to_string(),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives nvme0n1 a real ext4 filesystem so `auto` has exactly one choice left (vda). False
/// when mkfs.ext4 is missing (recorded as a skip; a failure under CI/RKE2_TEST_STRICT).
fn one_blank(t: &Tree) -> bool {
    if !prereq::program("mkfs.ext4", "e2fsprogs") {
        return false;
    }
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q"])
        .arg(t.node("nvme0n1")));
    true
}

#[test]
fn discovery_reads_qemu_shaped_tree() {
    let t = guest();
    let (s, d) = (t.sys(), t.dev());
    let disks = target::discover(&t.inputs(&s, &d, "")).unwrap();
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        ["dm-0", "nvme0n1", "sda", "sdb", "sdc", "sr0", "vda"]
    );
    let get = |n: &str| disks.iter().find(|d| d.name == n).unwrap();
    let vda = get("vda");
    assert_eq!(
        (vda.serial.as_str(), vda.size, vda.kind),
        ("VDA-SERIAL-1", SIZE, Kind::Disk)
    );
    assert_eq!(vda.by_id, ["virtio-VDA-SERIAL-1"]);
    assert!(vda.signatures.is_empty() && vda.partitions.is_empty());
    let nvme = get("nvme0n1");
    assert_eq!(
        (nvme.wwn.as_str(), nvme.serial.as_str(), nvme.model.as_str()),
        ("eui.0025385b71b0a8d2", "NVME0001", "QEMU NVMe Ctrl")
    );
    let sda = get("sda");
    assert_eq!(sda.serial, "LUN-SERIAL-9");
    assert_eq!(
        sda.multipath.as_deref(),
        Some("/dev/dm-0 (/dev/mapper/mpatha)")
    );
    assert!(
        sda.holders.is_empty(),
        "a multipath map is not an ordinary holder"
    );
    let dm = get("dm-0");
    assert_eq!(
        (dm.kind, dm.wwn.as_str()),
        (Kind::DeviceMapper, "naa.5000c50015ea71ad")
    );
    let sdc = get("sdc");
    assert!(sdc.removable && sdc.usb && !vda.usb);
    assert_eq!(sdc.serial, "", "an empty VPD page is no serial");
    assert_eq!(get("sr0").kind, Kind::Optical);
}

#[test]
fn auto_takes_the_only_blank_fixed_disk() {
    let t = guest();
    if !one_blank(&t) {
        return;
    }
    let d = select(&t, "auto", false).unwrap();
    assert_eq!(d.path(), "/dev/vda");
}

#[test]
fn auto_ambiguous_lists_every_candidate() {
    let t = guest();
    let e = refused(&t, "auto", false);
    assert!(
        e.starts_with(
            "install target auto (from install.target): 2 disks qualify; refusing to guess"
        ),
        "{e}"
    );
    let lines: Vec<&str> = e.lines().skip(1).collect();
    assert_eq!(lines.len(), 7, "{e}");
    let expect = [
        ("/dev/dm-0 256 MiB", "refused: device-mapper devices are only used when named explicitly"),
        ("/dev/nvme0n1 128 MiB model \"QEMU NVMe Ctrl\" serial \"NVME0001\" wwn eui.0025385b71b0a8d2", "qualifies (ambiguous"),
        ("/dev/sda 256 MiB model \"QEMU HARDDISK\" serial \"LUN-SERIAL-9\"", "refused: it is one path of multipath device /dev/dm-0 (/dev/mapper/mpatha)"),
        ("/dev/sdb 256 MiB", "refused: it is one path of multipath device"),
        ("/dev/sdc 64 MiB model \"QEMU USB HARDDRIVE\"", "refused: it is removable"),
        ("/dev/sr0 64 MiB model \"QEMU DVD-ROM\"", "refused: it is an optical drive"),
        ("/dev/vda 64 MiB serial \"VDA-SERIAL-1\"", "qualifies (ambiguous"),
    ];
    for (line, (head, why)) in lines.iter().zip(expect) {
        assert!(line.starts_with(&format!("  {head}")), "{line}");
        assert!(line.contains(why), "{line}");
    }
}

#[test]
fn auto_with_no_candidate_lists_why() {
    let t = guest();
    let (s, d) = (t.sys(), t.dev());
    let mut r = req("auto", false);
    r.min_size = Some(512 * MIB);
    let e = target::select(&r, &t.inputs(&s, &d, ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no disk qualifies among 7"), "{e}");
    assert!(
        e.contains("Fix: name the disk by /dev/disk/by-id/<id>"),
        "{e}"
    );
    assert_eq!(
        e.matches("smaller than install.min-size 512 MiB").count(),
        7,
        "{e}"
    );
    let empty = Tree::new();
    let (s, d) = (empty.sys(), empty.dev());
    let e = target::select(&r, &empty.inputs(&s, &d, ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(no block devices found)"), "{e}");
}

#[test]
fn every_spec_form_resolves() {
    let t = guest();
    for (spec, want) in [
        ("/dev/vda", "vda"),
        ("/dev/disk/by-id/virtio-VDA-SERIAL-1", "vda"),
        ("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_NVME0001", "nvme0n1"),
        ("serial:VDA-SERIAL-1", "vda"),
        ("serial:NVME0001", "nvme0n1"),
        ("wwn:eui.0025385b71b0a8d2", "nvme0n1"),
        ("wwn:0025385B71B0A8D2", "nvme0n1"),
        // The LUN's WWN and serial name the multipath map, not one of its paths.
        ("wwn:0x5000c50015ea71ad", "dm-0"),
        ("wwn:naa.5000c50015ea71ad", "dm-0"),
        ("/dev/mapper/mpatha", "dm-0"),
        ("/dev/dm-0", "dm-0"),
        // Removable media are used when named.
        ("/dev/sdc", "sdc"),
    ] {
        match select(&t, spec, false) {
            Ok(d) => assert_eq!(d.name, want, "{spec}"),
            Err(e) => panic!("{spec}: {e}"),
        }
    }
    assert_eq!(
        select(&t, "serial:LUN-SERIAL-9", false).unwrap().name,
        "dm-0"
    );
    // Two disks with one serial (QEMU lets you): never the first of them.
    t.disk(
        "pci0000:00/0000:00:08.0/virtio3/block",
        "vdb",
        "254:16",
        SIZE,
        &[("serial", "VDA-SERIAL-1")],
    );
    let e = refused(&t, "serial:VDA-SERIAL-1", false);
    assert!(e.contains("matches 2 disks; refusing to guess"), "{e}");
    assert!(
        e.contains("  /dev/vda 64 MiB serial \"VDA-SERIAL-1\": matches\n"),
        "{e}"
    );
    assert!(
        e.contains("  /dev/vdb 64 MiB serial \"VDA-SERIAL-1\": matches"),
        "{e}"
    );
    let e = refused(&t, "/dev/disk/by-id/virtio-NOPE", false);
    assert!(
        e.contains("no such disk. Fix: name one of the disks present"),
        "{e}"
    );
    assert!(
        e.contains("Disks present:\n  /dev/dm-0 256 MiB serial \"LUN-SERIAL-9\""),
        "{e}"
    );
    assert_eq!(e.lines().count(), 9, "{e}");
    let e = refused(&t, "serial:NOPE", false);
    assert!(
        e.contains("install target serial:NOPE (from install.target): no such disk"),
        "{e}"
    );
}

#[test]
fn request_from_command_line_reaches_the_disk() {
    let t = guest();
    let r = request(
        "install",
        None,
        "console=ttyS0 rke2.install=/dev/disk/by-id/virtio-VDA-SERIAL-1",
    )
    .unwrap()
    .unwrap();
    let (s, d) = (t.sys(), t.dev());
    assert_eq!(
        target::select(&r, &t.inputs(&s, &d, "")).unwrap().name,
        "vda"
    );
    fs::write(t.sysdir("vda").join("ro"), "1\n").unwrap();
    let e = target::select(&r, &t.inputs(&s, &d, ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(from kernel command line rke2.install) refuses /dev/vda"),
        "{e}"
    );
}

#[test]
fn refuses_the_boot_medium() {
    let t = guest();
    t.part("sdc", "sdc1", 1, "8:33");
    let (s, d) = (t.sys(), t.dev());
    let mut inp = t.inputs(&s, &d, "");
    inp.boot_device = Some("sdc1");
    let e = target::select(&req("/dev/sdc", true), &inp)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("it is the medium this system booted from"),
        "{e}"
    );
    // Booted from an ISO written to a disk: the root is a dm-linear mapping over vda, and the
    // boot device handed in is that mapping.
    t.disk(
        "virtual/block",
        "dm-5",
        "253:5",
        SIZE / 4,
        &[("dm/name", "rke2-live-root"), ("dm/uuid", "")],
    );
    t.holder("vda", "dm-5");
    inp.boot_device = Some("dm-5");
    let e = target::select(&req("/dev/vda", true), &inp)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("  - it is the medium this system booted from\n"),
        "{e}"
    );
    assert!(e.contains("  - it is in use by /dev/dm-5"), "{e}");
}

#[test]
fn refuses_a_multipath_path() {
    let t = guest();
    let e = refused(&t, "/dev/disk/by-id/wwn-0x5000c50015ea71ad", true);
    assert!(e.contains("refuses /dev/sda"), "{e}");
    assert!(e.contains("it is one path of multipath device /dev/dm-0 (/dev/mapper/mpatha); name the multipath device instead"), "{e}");
}

#[test]
fn refuses_a_mounted_disk() {
    let t = guest();
    t.part("vda", "vda1", 1, "254:1");
    let mi = "22 1 0:21 / /proc rw - proc proc rw\n36 22 254:1 / /mnt/data rw,relatime shared:1 - ext4 /dev/vda1 rw\n";
    let (s, d) = (t.sys(), t.dev());
    let e = target::select(&req("/dev/vda", true), &t.inputs(&s, &d, mi))
        .unwrap_err()
        .to_string();
    assert!(e.contains("  - it is mounted (at /mnt/data)"), "{e}");
}

#[test]
fn refuses_a_disk_in_use_under_device_mapper() {
    let t = guest();
    t.part("vda", "vda2", 2, "254:2");
    t.disk(
        "virtual/block",
        "dm-1",
        "253:1",
        SIZE / 2,
        &[("dm/name", "root"), ("dm/uuid", "CRYPT-VERITY-x")],
    );
    t.holder("vda2", "dm-1");
    // The root mounted from dm-1 counts as the disk being mounted.
    let mi = "25 1 253:1 / / ro - erofs /dev/mapper/root ro\n";
    let (s, d) = (t.sys(), t.dev());
    let e = target::select(&req("/dev/vda", true), &t.inputs(&s, &d, mi))
        .unwrap_err()
        .to_string();
    assert!(e.contains("it is in use by /dev/dm-1"), "{e}");
    assert!(e.contains("it is mounted (at /)"), "{e}");
}

#[test]
fn refuses_read_only() {
    let t = guest();
    fs::write(t.sysdir("vda").join("ro"), "1\n").unwrap();
    let e = refused(&t, "/dev/vda", true);
    assert!(e.contains("  - it is read-only"), "{e}");
}

#[test]
fn refuses_partitions_unless_wipe() {
    let t = guest();
    t.part("vda", "vda1", 1, "254:1");
    let e = refused(&t, "/dev/vda", false);
    assert!(e.contains("it has partitions (vda1); set install.wipe: true (or boot with rke2.install.wipe=1) to overwrite it"), "{e}");
    assert_eq!(select(&t, "/dev/vda", true).unwrap().name, "vda");
    let e = refused(&t, "/dev/vda1", true);
    assert!(
        e.contains("is partition /dev/vda1 of /dev/vda: name the whole disk"),
        "{e}"
    );
}

/// Writes a signature into vda with a real tool and checks what the scan reports, that the
/// disk is refused without wipe and accepted with it.
fn signature_case(tool: &str, package: &str, args: &[&str], stdin: Option<&str>, want: &str) {
    if !prereq::program(tool, package) {
        return;
    }
    let t = guest();
    let mut c = Command::new(tool);
    c.args(args).arg(t.node("vda"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{tool}");
    } else {
        run(&mut c);
    }
    let (s, d) = (t.sys(), t.dev());
    let disks = target::discover(&t.inputs(&s, &d, "")).unwrap();
    let vda = disks.iter().find(|d| d.name == "vda").unwrap();
    assert_eq!(vda.signatures, [want], "{tool}");
    let e = refused(&t, "/dev/vda", false);
    assert!(
        e.contains(&format!("it holds {want}; set install.wipe: true")),
        "{e}"
    );
    assert_eq!(select(&t, "/dev/vda", true).unwrap().name, "vda");
}

#[test]
fn refuses_gpt_from_sgdisk() {
    signature_case(
        "sgdisk",
        "gdisk",
        &["-o", "-n", "1:0:+1M"],
        None,
        "GPT partition table",
    );
}

#[test]
fn refuses_mbr_from_sfdisk() {
    signature_case(
        "sfdisk",
        "fdisk",
        &["-q"],
        Some("label: dos\n,8MiB,L\n"),
        "MBR partition table",
    );
}

#[test]
fn refuses_ext4_from_mkfs() {
    signature_case(
        "mkfs.ext4",
        "e2fsprogs",
        &["-F", "-q"],
        None,
        "ext2/3/4 filesystem",
    );
}

#[test]
fn refuses_fat_from_mkfs() {
    signature_case("mkfs.fat", "dosfstools", &[], None, "FAT filesystem");
}

#[test]
fn refuses_backup_gpt_when_primary_is_gone() {
    if !prereq::program("sgdisk", "gdisk") {
        return;
    }
    let t = guest();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:0:+1M"])
        .arg(t.node("vda")));
    // Zero the protective MBR and the primary header: only the backup at the last LBA is left.
    let mut img = fs::read(t.node("vda")).unwrap();
    img[..1024].fill(0);
    fs::write(t.node("vda"), &img).unwrap();
    let e = refused(&t, "/dev/vda", false);
    assert!(
        e.contains("it holds GPT partition table (backup header only)"),
        "{e}"
    );
}

#[test]
fn refuses_erofs_from_mkfs() {
    if !prereq::program("mkfs.erofs", "erofs-utils") {
        return;
    }
    let t = guest();
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let img = t.dir.path().join("e.img");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&img)
        .arg(&src));
    let bytes = fs::read(&img).unwrap();
    let mut disk = fs::OpenOptions::new()
        .write(true)
        .open(t.node("vda"))
        .unwrap();
    std::io::Write::write_all(&mut disk, &bytes).unwrap();
    drop(disk);
    let e = refused(&t, "/dev/vda", false);
    assert!(e.contains("it holds EROFS filesystem;"), "{e}");
}

#[test]
fn a_disk_of_zeros_is_blank() {
    let t = guest();
    fs::write(t.node("vda"), vec![0u8; SIZE as usize]).unwrap();
    let d = select(&t, "/dev/vda", false).unwrap();
    assert!(d.signatures.is_empty());
}

#[test]
fn refuses_outside_the_size_range_and_smaller_than_the_image() {
    let t = guest();
    let (s, d) = (t.sys(), t.dev());
    let mut r = req("/dev/vda", false);
    r.min_size = Some(128 * MIB);
    let e = target::select(&r, &t.inputs(&s, &d, ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("it is smaller than install.min-size 128 MiB"),
        "{e}"
    );
    r.min_size = None;
    r.max_size = Some(32 * MIB);
    let e = target::select(&r, &t.inputs(&s, &d, ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("it is larger than install.max-size 32 MiB"),
        "{e}"
    );
    r.max_size = Some(SIZE);
    let mut inp = t.inputs(&s, &d, "");
    inp.image_size = SIZE + 1;
    let e = target::select(&r, &inp).unwrap_err().to_string();
    assert!(
        e.contains("it is smaller than the image (64.0 MiB needed)"),
        "{e}"
    );
    inp.image_size = SIZE;
    assert_eq!(target::select(&r, &inp).unwrap().name, "vda");
}

#[test]
fn auto_ignores_wipe_and_takes_blank_disks_only() {
    let t = guest();
    if !one_blank(&t) {
        return;
    }
    t.part("vda", "vda1", 1, "254:1");
    let e = refused(&t, "auto", true);
    assert!(e.contains("no disk qualifies among 7"), "{e}");
    assert!(e.contains("/dev/nvme0n1 128 MiB model \"QEMU NVMe Ctrl\" serial \"NVME0001\" wwn eui.0025385b71b0a8d2: refused: it holds ext2/3/4 filesystem; auto only takes blank disks; name this disk and set install.wipe: true to overwrite it"), "{e}");
    assert!(e.contains("/dev/vda 64 MiB serial \"VDA-SERIAL-1\": refused: it has partitions (vda1); auto only takes blank disks"), "{e}");
    assert_eq!(select(&t, "/dev/nvme0n1", true).unwrap().name, "nvme0n1");
}

#[test]
fn auto_refuses_removable_and_usb() {
    let t = guest();
    if !one_blank(&t) {
        return;
    }
    // vda taken out of the running: only sdc (removable) and a non-removable USB disk remain.
    fs::write(t.sysdir("vda").join("ro"), "1\n").unwrap();
    t.disk(
        "pci0000:00/0000:00:07.0/usb1/1-2/1-2:1.0/host3/target3:0:0/3:0:0:0/block",
        "sdd",
        "8:48",
        SIZE,
        &[("device/model", "USB DISK")],
    );
    let e = refused(&t, "auto", false);
    assert!(e.contains("/dev/sdc 64 MiB model \"QEMU USB HARDDRIVE\": refused: it is removable (auto never picks removable media; name it to use it)"), "{e}");
    assert!(
        e.contains("/dev/sdd 64 MiB model \"USB DISK\": refused: it is attached through USB"),
        "{e}"
    );
    assert_eq!(select(&t, "/dev/sdd", false).unwrap().name, "sdd");
}

#[test]
fn refuses_optical_ram_and_unreadable() {
    let t = guest();
    let e = refused(&t, "/dev/sr0", true);
    assert!(e.contains("it is an optical drive"), "{e}");
    t.disk("virtual/block", "zram0", "252:0", SIZE, &[]);
    let e = refused(&t, "/dev/zram0", true);
    assert!(e.contains("it is a RAM disk"), "{e}");
    t.disk(
        "platform/mmc0/mmc0:0001/block",
        "mmcblk0boot0",
        "179:8",
        4 * MIB,
        &[],
    );
    let e = refused(&t, "/dev/mmcblk0boot0", true);
    assert!(e.contains("it is an eMMC boot or RPMB area"), "{e}");
    fs::remove_file(t.node("vda")).unwrap();
    let e = refused(&t, "/dev/vda", true);
    assert!(
        e.contains("its first and last sectors cannot be read"),
        "{e}"
    );
}

#[test]
fn signature_table_entries_are_each_found_alone() {
    for s in SIGNATURES {
        let mut head = vec![0u8; target::HEAD_BYTES];
        head[s.offset as usize..s.offset as usize + s.magic.len()].copy_from_slice(s.magic);
        assert_eq!(target::scan(&head, &[0; 4096], 512), [s.name], "{}", s.name);
    }
    let zeros = vec![0u8; target::HEAD_BYTES];
    assert!(target::scan(&zeros, &[0; 4096], 512).is_empty());
    // An MBR signature with an empty table is not a partition table.
    let mut mbr = zeros.clone();
    mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
    assert!(target::scan(&mbr, &[0; 4096], 512).is_empty());
    mbr[446 + 4] = 0x83;
    assert_eq!(target::scan(&mbr, &[0; 4096], 512), ["MBR partition table"]);
    // GPT on a 4096-byte-sector disk: header at byte 4096.
    let mut gpt = zeros;
    gpt[4096..4104].copy_from_slice(b"EFI PART");
    assert_eq!(
        target::scan(&gpt, &[0; 4096], 4096),
        ["GPT partition table"]
    );
    assert!(target::scan(&gpt, &[0; 4096], 512).is_empty());
}
