//! Network boot of the `pxe` output through real firmware: OVMF's PXE client fetches Debian's
//! `ipxe.efi` over QEMU's TFTP, iPXE fetches `boot.ipxe` and the files beside it over HTTP from
//! a server on 127.0.0.1 (reached through a `guestfwd`), and the diskless node must reach the
//! probe with the dm-verity root opened from the initramfs and its state in RAM. The same
//! image is then booted from its raw disk (a qcow2 overlay) for the timing comparison.
//!
//! How iPXE is made to chain `boot.ipxe`: see `rke2_qemu_tests::pxe`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use rke2_qemu_tests::built;
use rke2_qemu_tests::probe;
use rke2_qemu_tests::pxe::{Corrupt, Http, Netboot, IPXE_EFI, PXE_MEMORY_MIB};
use rke2_qemu_tests::vm::{accel, Boot, Config, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(1500);
const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pxe")
}

fn fact<'a>(facts: &'a std::collections::BTreeMap<String, String>, k: &str) -> &'a str {
    facts
        .get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("probe fact {k} missing; facts: {facts:?}"))
}

/// Seconds from QEMU start to rke2-init's hand-off and to the probe.
struct Times {
    handoff: f64,
    probe: f64,
}

fn times(vm: &Vm, probe_at: Duration) -> Times {
    Times {
        handoff: vm
            .seen_at("rke2-init: handing off to /sbin/init")
            .unwrap()
            .as_secs_f64(),
        probe: probe_at.as_secs_f64(),
    }
}

/// Starts a diskless VM that network-boots `pxe` (served over HTTP, optionally corrupted)
/// through OVMF's PXE and Debian's iPXE; returns once iPXE has the script as its boot file.
/// `script` is the iPXE script in `pxe` to chain; `state_disk` a writable disk to attach.
fn pxe_vm(
    work: &Path,
    pxe: &Path,
    name: &str,
    corrupt: Option<Corrupt>,
    script: &str,
    state_disk: Option<&Path>,
) -> (Vm, Http) {
    let net = Netboot::start(work, name, pxe, corrupt).unwrap();
    let mut cfg = Config::new(work.join("no-disk"), net.boot());
    cfg.memory_mib = PXE_MEMORY_MIB;
    cfg.rw_drives = state_disk.map(Path::to_path_buf).into_iter().collect();
    cfg.log = Some(work.join(format!("{name}.console.log")));
    cfg.nics = vec![net.nic("52:54:00:12:34:56").unwrap()];
    let mut vm = Vm::start(&cfg).unwrap();
    net.chain(&mut vm, script, &FATAL)
        .unwrap_or_else(|e| panic!("{name} ({}): {e:#}", accel()));
    (vm, net.http)
}

#[test]
fn pxe_boot_through_ovmf_and_ipxe_reaches_probe_with_verified_root_and_ram_state() {
    let (base, programs) = rke2_qemu_tests::need!(rke2_qemu_tests::test_inputs());
    if !Path::new(IPXE_EFI).is_file() {
        rke2_testsupport::prereq::missing(format!(
            "{IPXE_EFI} (Debian package ipxe; scripts/setup-host installs it)"
        ));
        return;
    }
    if !rke2_testsupport::prereq::program("qemu-img", "qemu-utils") {
        return;
    }
    let work = work_dir();
    let _ = std::fs::remove_dir_all(&work);
    let img = built::build_formats(&base, &programs, &work, "", "raw,pxe")
        .expect("building the test image with the pxe output");
    let pxe = img
        .pxe
        .clone()
        .expect("the build published no .pxe directory");
    let pxe_bytes: u64 = std::fs::read_dir(&pxe)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!(
        "pxe directory: {} MiB ({})",
        pxe_bytes >> 20,
        std::fs::read_dir(&pxe)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                format!(
                    "{} {} KiB",
                    e.file_name().to_string_lossy(),
                    e.metadata().unwrap().len() >> 10
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );

    let (mut vm, http) = pxe_vm(&work, &pxe, "pxe", None, "boot.ipxe", None);
    let probe_at = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "PXE boot ({}): {e}\nHTTP requests: {:?}",
                accel(),
                http.requests()
            )
        });
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    let t_pxe = times(&vm, probe_at);
    drop(vm);

    // It really went through the network: every file fetched over HTTP by relative name.
    let reqs = http.requests();
    for f in ["boot.ipxe", "vmlinuz", "initrd", "rootfs.img"] {
        assert!(
            reqs.iter().any(|r| r.starts_with(&format!("GET /{f} "))),
            "{f} not fetched: {reqs:?}"
        );
    }
    assert!(
        console.contains("rke2 test: chaining boot.ipxe"),
        "iPXE ran no script"
    );
    assert!(console.contains("/rke2-root/root.img attached read-only to /dev/loop"));
    assert!(console.contains("/rke2-state.img attached read-write to /dev/loop"));
    assert!(console.contains("rke2-init: state: RAM (/dev/loop"));
    let facts = probe::facts(&console);
    assert_eq!(fact(&facts, "root_fstype"), "erofs");
    assert!(fact(&facts, "root_dm_name").starts_with("rke2-root-a"));
    assert!(fact(&facts, "root_dm_uuid").starts_with("RKE2-VERITY-"));
    assert!(fact(&facts, "root_dm_slaves").contains("loop"), "{facts:?}");
    assert_eq!(fact(&facts, "root_writable"), "0");
    assert_eq!(fact(&facts, "fips"), "1");
    assert_eq!(fact(&facts, "selinux_enforce"), "1");
    assert!(console.contains("fips mode: enabled"));
    assert_eq!(fact(&facts, "writable:/etc"), "1");
    assert_eq!(fact(&facts, "writable:/var"), "1");
    assert_eq!(fact(&facts, "fstype:/etc"), "overlay");
    // State in RAM: ext4 on a loop device over a sparse initramfs file, so SELinux labels
    // behave as on the state partition.
    assert_eq!(fact(&facts, "fstype:/var"), "ext4");
    assert!(
        fact(&facts, "state_source").starts_with("/dev/loop"),
        "{facts:?}"
    );
    assert!(fact(&facts, "label:/etc").contains(":etc_t:"), "{facts:?}");
    assert!(fact(&facts, "label:/var").contains(":var_t:"), "{facts:?}");
    let ours = probe::our_denials(&console);
    assert!(ours.is_empty(), "AVC denials for our components: {ours:#?}");
    // The command line is the UKI's (root hash included) plus the root source.
    assert!(console.contains(&format!("rke2.roothash={}", img.manifest.verity.root_hash)));

    // The same image from its disk, through a qcow2 overlay (no copy of the image).
    let overlay = work.join("raw-boot.qcow2");
    built::overlay_disk(&img.disk, &overlay, None).unwrap();
    let mut cfg = Config::new(&overlay, Boot::Uefi);
    cfg.log = Some(work.join("raw.console.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    let probe_at = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("raw boot ({}): {e}", accel()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let t_raw = times(&vm, probe_at);
    drop(vm);
    eprintln!(
        "PXE: rke2-init hand-off {:.1} s, probe {:.1} s after QEMU start; raw disk: {:.1} s, {:.1} s ({}, pxe dir {} MiB)",
        t_pxe.handoff,
        t_pxe.probe,
        t_raw.handoff,
        t_raw.probe,
        accel(),
        pxe_bytes >> 20
    );

    // A corrupted download of rootfs.img (one bit of the EROFS superblock block, which the
    // mount reads first) stops the boot in rke2-init with the reason on the console.
    let cpio = std::fs::read(pxe.join("rootfs.img"))
        .map(|b| b[..4096].to_vec())
        .unwrap();
    let name = b"rke2-root/root.img\0";
    let at = cpio.windows(name.len()).position(|w| w == name).unwrap();
    let data = (at + name.len()).div_ceil(4) * 4;
    let (mut vm, _http) = pxe_vm(
        &work,
        &pxe,
        "pxe-corrupt",
        Some(Corrupt {
            file: "rootfs.img".into(),
            offset: (data + 1024 + 16) as u64,
        }),
        "boot.ipxe",
        None,
    );
    let failed = vm
        .wait_line(
            "rke2-init: FAILED",
            &["handing off to /sbin/init"],
            BOOT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("corrupted PXE root ({}): {e}", accel()));
    assert!(
        failed.contains("rootfs.img does not match rke2.roothash"),
        "{failed}"
    );
    eprintln!("corrupted rootfs.img: {failed}");
    drop(vm);

    // rke2.state_disk: a blank disk is formatted as the state filesystem and used.
    let script = std::fs::read_to_string(pxe.join("boot.ipxe"))
        .unwrap()
        .replace(
            "rke2.root=initramfs",
            "rke2.root=initramfs rke2.state_disk=/dev/vda",
        );
    std::fs::write(pxe.join("boot-state-disk.ipxe"), script).unwrap();
    let state_disk = work.join("state-disk.raw");
    std::fs::File::create(&state_disk)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (mut vm, _http) = pxe_vm(
        &work,
        &pxe,
        "pxe-state-disk",
        None,
        "boot-state-disk.ipxe",
        Some(&state_disk),
    );
    vm.wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("PXE boot with a state disk ({}): {e}", accel()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    drop(vm);
    assert!(console.contains("rke2-init: state: created and formatted /dev/vda"));
    let facts = probe::facts(&console);
    assert_eq!(fact(&facts, "state_source"), "/dev/vda");
    assert_eq!(fact(&facts, "fstype:/var"), "ext4");
    // Oracle: the disk now holds ext4 labelled rke2-state (superblock magic and volume name).
    let mut sb = [0u8; 1024];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&state_disk).unwrap(),
        &mut sb,
        1024,
    )
    .unwrap();
    assert_eq!(&sb[56..58], &[0x53, 0xef]);
    assert_eq!(&sb[120..130], b"rke2-state");

    // Passed: keep the console logs only.
    for e in std::fs::read_dir(&work).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}
