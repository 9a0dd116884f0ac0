//! Secure Boot under OVMF (`OVMF_CODE_4M.secboot.fd`, SMM): an image whose systemd-boot and
//! UKI are signed with the key enrolled in `OVMF_VARS_4M.snakeoil.fd` boots to multi-user with
//! the kernel reporting Secure Boot and verity/FIPS/SELinux holding; the firmware refuses an
//! unsigned image, an image signed with another key (from `rke2-image keys generate`) and a
//! signed image whose UKI `.cmdline` was changed by one byte afterwards.
//!
//! Images are built once per suite and shared; one VM at a time.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use rke2_qemu_tests::built::{self, run, Image};
use rke2_qemu_tests::probe;
use rke2_qemu_tests::vm::{Boot, Config, Vm, OVMF_VARS_SNAKEOIL};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// Refusals show within seconds of the firmware starting; generous for TCG.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(300);
const FATAL: [&str; 3] = ["Kernel panic", "rke2-init: FAILED", "emergency mode"];
const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

static SERIAL: Mutex<()> = Mutex::new(());

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("secureboot")
}

fn secure_boot(key: &Path, cert: &Path) -> String {
    format!(
        "security:\n  secureBoot:\n    key: {}\n    cert: {}\n",
        key.display(),
        cert.display()
    )
}

struct Images {
    snakeoil: Image,
    other_key: Image,
    unsigned: Image,
}

/// Three builds from the same base: signed with the snakeoil key, signed with a key from
/// `keys generate`, unsigned.
fn images() -> Option<&'static Images> {
    static IMG: OnceLock<Option<Images>> = OnceLock::new();
    IMG.get_or_init(|| {
        let (base, programs) = rke2_qemu_tests::test_inputs()?;
        let w = work_dir();
        fs::create_dir_all(&w).unwrap();
        // The snakeoil key is encrypted (passphrase "snakeoil"); the build wants plain PEM.
        let db_key = w.join("snakeoil-db.key");
        run(Command::new("openssl")
            .args([
                "rsa",
                "-passin",
                "pass:snakeoil",
                "-in",
                SNAKEOIL_KEY,
                "-out",
            ])
            .arg(&db_key))
        .unwrap();
        let other = w.join("other-keys");
        let _ = fs::remove_dir_all(&other);
        run(Command::new(programs.join("rke2-image"))
            .args(["keys", "generate"])
            .arg(&other))
        .unwrap();
        let build = |name: &str, extra: &str| {
            let start = std::time::Instant::now();
            let img = built::build(&base, &programs, &w.join(name), extra).unwrap();
            eprintln!("built {name} in {:.0} s", start.elapsed().as_secs_f64());
            img
        };
        Some(Images {
            snakeoil: build("snakeoil", &secure_boot(&db_key, Path::new(SNAKEOIL_CERT))),
            other_key: build(
                "other",
                &secure_boot(&other.join("db.key"), &other.join("db.crt")),
            ),
            unsigned: build("unsigned", ""),
        })
    })
    .as_ref()
}

fn start(disk: &Path, name: &str) -> Vm {
    let mut cfg = Config::new(
        disk,
        Boot::SecureUefi {
            vars: OVMF_VARS_SNAKEOIL.into(),
        },
    );
    cfg.log = Some(work_dir().join(format!("{name}.console.log")));
    Vm::start(&cfg).unwrap()
}

#[test]
fn signed_image_boots_with_secure_boot_enforced() {
    let imgs = rke2_qemu_tests::need!(images());
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let disk = work_dir().join("signed.raw");
    built::copy_disk(&imgs.snakeoil.disk, &disk, None).unwrap();
    let mut vm = start(&disk, "signed");
    let t = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("signed image under Secure Boot: {e}\n{}", vm.tail()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    eprintln!(
        "secure boot: probe done {:.1} s after QEMU start",
        t.as_secs_f64()
    );
    // The kernel's own report (arch/x86/kernel/setup.c, efi_secureboot).
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "kernel did not report Secure Boot"
    );
    let facts = probe::facts(&console);
    let fact = |k: &str| facts.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(fact("root_fstype"), "erofs");
    assert!(fact("root_dm_name").starts_with("rke2-root-a"), "{facts:?}");
    assert!(fact("root_dm_uuid").starts_with("RKE2-VERITY-"));
    assert_eq!(fact("root_writable"), "0");
    assert_eq!(fact("fips"), "1");
    assert_eq!(fact("selinux_enforce"), "1");
    assert!(console.contains("fips mode: enabled"));
    assert!(console.contains(&format!(
        "rke2.roothash={}",
        imgs.snakeoil.manifest.verity.root_hash
    )));
}

/// Boots `disk` and expects the firmware (or signed systemd-boot) to refuse to start an image:
/// the console shows the refusal and the kernel never starts.
fn refused(disk: &Path, name: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vm = start(disk, name);
    // OVMF's boot manager says "Access Denied"; systemd-boot prints the EFI status of a
    // refused LoadImage ("Access Denied" or "Security Violation").
    let started = std::time::Instant::now();
    let seen = loop {
        if let Some(m) = ["Access Denied", "Security Violation"]
            .into_iter()
            .find(|m| vm.seen_at(m).is_some())
        {
            break Some(m);
        }
        if vm.seen_at("Linux version").is_some() || started.elapsed() > REFUSE_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let console = vm.console();
    drop(vm);
    eprintln!(
        "{name}: refused ({seen:?}) after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        seen.is_some(),
        "{name}: no refusal on the console:\n{}",
        rke2_qemu_tests::vm::tail(&console, 30)
    );
    assert!(
        !console.contains("Linux version"),
        "{name}: a kernel started"
    );
}

#[test]
fn firmware_refuses_unsigned_other_key_and_tampered_images() {
    let imgs = rke2_qemu_tests::need!(images());
    let w = work_dir();
    let unsigned = w.join("unsigned.raw");
    built::copy_disk(&imgs.unsigned.disk, &unsigned, None).unwrap();
    refused(&unsigned, "unsigned");

    let other = w.join("other.raw");
    built::copy_disk(&imgs.other_key.disk, &other, None).unwrap();
    refused(&other, "other-key");

    // One byte of the signed UKI's .cmdline changed (the root hash's first digit): systemd-boot
    // is still validly signed, the UKI's Authenticode hash no longer matches.
    let tampered = w.join("tampered.raw");
    built::copy_disk(&imgs.snakeoil.disk, &tampered, None).unwrap();
    let esp = imgs
        .snakeoil
        .manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == "esp")
        .unwrap();
    let esp_img = format!("{}@@{}", tampered.display(), esp.first_lba * 512);
    let uki = w.join("tampered.efi");
    let entry = format!("::/{}", imgs.snakeoil.manifest.boot.entry);
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i", &esp_img, &entry])
        .arg(&uki))
    .unwrap();
    let mut bytes = fs::read(&uki).unwrap();
    let needle = b"rke2.roothash=";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + needle.len();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    fs::write(&uki, &bytes).unwrap();
    run(Command::new("mcopy")
        .args(["-o", "-n", "-i", &esp_img])
        .arg(&uki)
        .arg(&entry))
    .unwrap();
    refused(&tampered, "tampered-cmdline");
}
