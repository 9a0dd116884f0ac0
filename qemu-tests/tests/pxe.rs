//! Network boot of the `pxe` output through real firmware: OVMF's PXE client fetches Debian's
//! `ipxe.efi` over QEMU's TFTP, iPXE fetches `boot.ipxe` and the files beside it over HTTP from
//! a server on 127.0.0.1 (reached through a `guestfwd`), and the diskless node must reach the
//! probe with the dm-verity root opened from the initramfs and its state in RAM. The same
//! image is then booted from its raw disk (a qcow2 overlay) for the timing comparison.
//!
//! How iPXE gets to `boot.ipxe`: QEMU's DHCP hands every client the same boot file, so iPXE,
//! loaded as `ipxe.efi`, would fetch and start `ipxe.efi` again forever, and Debian's 2019
//! build neither embeds a script nor looks for `autoexec.ipxe`. Real deployments answer iPXE's
//! DHCP request (user class `iPXE`) with the script's URL instead; here the TFTP file is
//! replaced by a short iPXE script once iPXE prints its banner, so iPXE's own
//! fetch of the boot file gets the script (iPXE recognises `#!ipxe` whatever the name).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rke2_qemu_tests::built;
use rke2_qemu_tests::probe;
use rke2_qemu_tests::vm::{accel, Boot, Config, Net, Nic, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(1500);
const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];
/// Debian package `ipxe`.
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// The banner of the iPXE that OVMF's PXE client loaded: OVMF's download is over, iPXE's
/// own DHCP and fetch of the boot file have not started (its Ctrl-B prompt comes first).
const IPXE_STARTED: &str = "Open Source Network Boot Firmware";
const HTTP_GUEST: &str = "10.0.2.100:80";
/// The root lives in RAM twice while the kernel unpacks it (the loaded initrd and the
/// unpacked file), on top of the running system.
const PXE_MEMORY_MIB: u32 = 3072;

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pxe")
}

/// A static file server for one directory: GET of a plain file name, `Connection: close`.
/// Records every request line.
struct Http {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serve `file` with the byte at `offset` flipped (a corrupted download).
#[derive(Clone)]
struct Corrupt {
    file: String,
    offset: u64,
}

impl Http {
    fn start(dir: PathBuf, corrupt: Option<Corrupt>) -> Http {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let dir = dir.clone();
                let log = Arc::clone(&log);
                let corrupt = corrupt.clone();
                std::thread::spawn(move || serve(conn, &dir, &log, corrupt.as_ref()));
            }
        });
        Http { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, dir: &Path, log: &Mutex<Vec<String>>, corrupt: Option<&Corrupt>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    log.lock().unwrap().push(line.trim().to_string());
    let mut out = conn;
    let name = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .trim_start_matches('/');
    let file = (!name.is_empty() && !name.contains('/') && !name.starts_with('.'))
        .then(|| std::fs::File::open(dir.join(name)).ok())
        .flatten();
    match file {
        Some(mut f) => {
            let len = f.metadata().unwrap().len();
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            match corrupt.filter(|c| c.file == name) {
                Some(c) => {
                    use std::io::Read;
                    let _ = std::io::copy(&mut (&mut f).take(c.offset), &mut out);
                    let mut b = [0u8; 1];
                    if f.read_exact(&mut b).is_ok() {
                        let _ = out.write_all(&[b[0] ^ 0x01]);
                    }
                    let _ = std::io::copy(&mut f, &mut out);
                }
                None => {
                    let _ = std::io::copy(&mut f, &mut out);
                }
            }
        }
        None => {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
    let _ = out.flush();
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
    let tftp = work.join(format!("{name}-tftp"));
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::copy(IPXE_EFI, tftp.join("ipxe.efi")).unwrap();
    let http = Http::start(pxe.to_path_buf(), corrupt);
    let mut cfg = Config::new(
        work.join("no-disk"),
        Boot::Pxe {
            tftp: tftp.clone(),
            bootfile: "ipxe.efi".into(),
        },
    );
    cfg.memory_mib = PXE_MEMORY_MIB;
    cfg.rw_drives = state_disk.map(Path::to_path_buf).into_iter().collect();
    cfg.log = Some(work.join(format!("{name}.console.log")));
    cfg.nics = vec![Nic {
        mac: "52:54:00:12:34:56".into(),
        net: Net::User {
            forwards: vec![(HTTP_GUEST.parse().unwrap(), http.addr)],
        },
    }];
    let mut vm = Vm::start(&cfg).unwrap();
    vm.wait_for(IPXE_STARTED, &FATAL, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("OVMF PXE ({}): {e}", accel()));
    // From now on the boot file is the script that chains boot.ipxe (see the module docs).
    let next = tftp.join("ipxe.efi.next");
    std::fs::write(
        &next,
        format!("#!ipxe\necho rke2 test: chaining {script}\nchain http://{HTTP_GUEST}/{script}\n"),
    )
    .unwrap();
    std::fs::rename(&next, tftp.join("ipxe.efi")).unwrap();
    (vm, http)
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
    let pxe = work.join("out/qemu-test-1.pxe");
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
    built::run(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&img.disk)
            .arg(&overlay),
    )
    .unwrap();
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
    vm.wait_for(
        "rke2-init: FAILED",
        &["handing off to /sbin/init"],
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("corrupted PXE root ({}): {e}", accel()));
    std::thread::sleep(Duration::from_secs(2));
    let console = vm.console();
    let failed = console
        .lines()
        .find(|l| l.contains("rke2-init: FAILED"))
        .unwrap();
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
