//! Secure Boot under OVMF (`OVMF_CODE_4M.secboot.fd`, SMM): an image whose systemd-boot and
//! UKI are signed with the key enrolled in `OVMF_VARS_4M.snakeoil.fd` boots to multi-user with
//! the kernel reporting Secure Boot and verity/FIPS/SELinux holding; the firmware refuses an
//! unsigned image, an image signed with another key (from `rke2-image keys generate`) and a
//! signed image whose UKI `.cmdline` was changed by one byte afterwards. The PK/KEK/db from
//! `rke2-image keys generate`, enrolled into a copy of `OVMF_VARS_4M.fd` with `virt-fw-vars`,
//! boot an image signed with that db key and refuse one signed with the snakeoil key; the same
//! image booted with Secure Boot off gives the on/off boot-time comparison (printed as
//! `bench-secureboot:` lines for scripts/bench-secureboot). systemd-boot 252 enrolls the same
//! keys itself from the ESP's `loader/keys/auto/*.auth` (`secure-boot-enroll force`).
//!
//! Images are built once per suite and shared; one VM at a time.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use rke2_qemu_tests::built::{self, run, Image};
use rke2_qemu_tests::probe;
use rke2_qemu_tests::vm::{Boot, Config, Vm, OVMF_VARS, OVMF_VARS_SNAKEOIL};
use rke2_testsupport::scratch::Scratch;
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

/// Signed with the snakeoil key, with a key from `keys generate` (`other-keys/`), unsigned:
/// each built from the same base on first use.
#[derive(Clone, Copy)]
enum Kind {
    Snakeoil,
    OtherKey,
    Unsigned,
}

fn image(kind: Kind) -> Option<&'static Image> {
    static IMG: [OnceLock<Option<Image>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    IMG[kind as usize]
        .get_or_init(|| {
            let (base, programs) = rke2_qemu_tests::test_inputs()?;
            let w = work_dir();
            fs::create_dir_all(&w).unwrap();
            let (name, extra) = match kind {
                Kind::Snakeoil => {
                    // The snakeoil key is encrypted (passphrase "snakeoil"); the build wants
                    // plain PEM.
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
                    ("snakeoil", secure_boot(&db_key, Path::new(SNAKEOIL_CERT)))
                }
                Kind::OtherKey => {
                    let other = other_keys(&programs);
                    (
                        "other",
                        secure_boot(&other.join("db.key"), &other.join("db.crt")),
                    )
                }
                Kind::Unsigned => ("unsigned", String::new()),
            };
            let start = std::time::Instant::now();
            let img = built::build(&base, &programs, &w.join(name), &extra).unwrap();
            eprintln!("built {name} in {:.0} s", start.elapsed().as_secs_f64());
            Some(img)
        })
        .as_ref()
}

/// `rke2-image keys generate` output, made once per suite.
fn other_keys(programs: &Path) -> PathBuf {
    static KEYS: OnceLock<PathBuf> = OnceLock::new();
    KEYS.get_or_init(|| {
        let other = work_dir().join("other-keys");
        let _ = fs::remove_dir_all(&other);
        run(Command::new(programs.join("rke2-image"))
            .args(["keys", "generate"])
            .arg(&other))
        .unwrap();
        other
    })
    .clone()
}

fn start(disk: &Path, name: &str, boot: Boot) -> Vm {
    let mut cfg = Config::new(disk, boot);
    cfg.log = Some(work_dir().join(format!("{name}.console.log")));
    Vm::start(&cfg).unwrap()
}

#[test]
fn signed_image_boots_with_secure_boot_enforced() {
    let img = rke2_qemu_tests::need!(image(Kind::Snakeoil));
    let t = boots_secured(
        img,
        "signed",
        Boot::SecureUefi {
            vars: OVMF_VARS_SNAKEOIL.into(),
        },
    );
    eprintln!(
        "secure boot: probe done {:.1} s after QEMU start",
        t.as_secs_f64()
    );
}

/// Boots `img` and checks what a signed boot must give: the kernel reports Secure Boot (when
/// `boot` enforces it), the root is the verity-protected EROFS, FIPS and SELinux hold.
/// Returns the time from QEMU start to the probe's report (multi-user reached).
fn boots_secured(img: &Image, name: &str, boot: Boot) -> Duration {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let enforced = matches!(boot, Boot::SecureUefi { .. });
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join(format!("{name}.qcow2")));
    built::overlay_disk(&img.disk, &disk, None).unwrap();
    let mut vm = start(&disk, name, boot);
    let t = vm
        .wait_for("RKE2-PROBE done=1", &FATAL, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", vm.tail()));
    vm.wait_exit(Duration::from_secs(120)).unwrap();
    let console = vm.console();
    // The kernel's own report (arch/x86/kernel/setup.c, efi_secureboot).
    assert_eq!(
        console.contains("secureboot: Secure boot enabled"),
        enforced,
        "{name}: kernel's Secure Boot report"
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
    assert!(console.contains(&format!("rke2.roothash={}", img.manifest.verity.root_hash)));
    t
}

/// Boots `disk` and expects the firmware (or signed systemd-boot) to refuse to start an image:
/// the console shows the refusal and the kernel never starts.
fn refused(disk: &Path, name: &str) {
    refused_by(disk, name, OVMF_VARS_SNAKEOIL.as_ref())
}

fn refused_by(disk: &Path, name: &str, vars: &Path) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vm = start(disk, name, Boot::SecureUefi { vars: vars.into() });
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
    let unsigned_img = rke2_qemu_tests::need!(image(Kind::Unsigned));
    let other_img = rke2_qemu_tests::need!(image(Kind::OtherKey));
    let snakeoil = rke2_qemu_tests::need!(image(Kind::Snakeoil));
    let w = work_dir();
    let mut scratch = Scratch::new();
    let unsigned = scratch.add(w.join("unsigned.qcow2"));
    built::overlay_disk(&unsigned_img.disk, &unsigned, None).unwrap();
    refused(&unsigned, "unsigned");

    let other = scratch.add(w.join("other.qcow2"));
    built::overlay_disk(&other_img.disk, &other, None).unwrap();
    refused(&other, "other-key");

    // One byte of the signed UKI's .cmdline changed (the root hash's first digit): systemd-boot
    // is still validly signed, the UKI's Authenticode hash no longer matches.
    // A real copy: its ESP is edited in place.
    let tampered = scratch.add(w.join("tampered.raw"));
    built::copy_disk(&snakeoil.disk, &tampered, None).unwrap();
    let esp = snakeoil
        .manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == "esp")
        .unwrap();
    let esp_img = format!("{}@@{}", tampered.display(), esp.first_lba * 512);
    let uki = scratch.add(w.join("tampered.efi"));
    let entry = format!("::/{}", snakeoil.manifest.boot.entry);
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

/// `keys generate` output enrolled the way a VM owner would: PK, KEK and db certificates into a
/// copy of the empty `OVMF_VARS_4M.fd` with virt-fw-vars, Secure Boot on.
fn enrolled_vars(keys: &Path) -> PathBuf {
    let out = work_dir().join("OVMF_VARS_generated.fd");
    // The owner GUID only labels the entries; firmware checks the certificates.
    let guid = "8b3f0f3e-6a51-4d7c-9d55-2b8c1e4f6a10";
    run(Command::new("virt-fw-vars")
        .args(["-i", OVMF_VARS, "--set-pk", guid])
        .arg(keys.join("PK.crt"))
        .args(["--add-kek", guid])
        .arg(keys.join("KEK.crt"))
        .args(["--add-db", guid])
        .arg(keys.join("db.crt"))
        .args(["--secure-boot", "-o"])
        .arg(&out))
    .unwrap();
    out
}

#[test]
fn generated_keys_enrolled_boot_their_image_and_refuse_snakeoil() {
    let (_, programs) = rke2_qemu_tests::need!(rke2_qemu_tests::test_inputs());
    let other = rke2_qemu_tests::need!(image(Kind::OtherKey));
    let vars = enrolled_vars(&other_keys(&programs));
    let on = boots_secured(
        other,
        "generated-keys",
        Boot::SecureUefi { vars: vars.clone() },
    );
    // The same image bytes with Secure Boot off (plain OVMF): the cost of verification.
    let off = boots_secured(other, "generated-keys-sb-off", Boot::Uefi);
    eprintln!(
        "bench-secureboot: QEMU start to multi-user probe: secure boot on {:.1} s, off {:.1} s",
        on.as_secs_f64(),
        off.as_secs_f64()
    );
    let uki = work_dir().join("other/uki.efi");
    eprintln!(
        "bench-secureboot: signed UKI {} bytes",
        fs::metadata(&uki).unwrap().len()
    );
    let snakeoil = rke2_qemu_tests::need!(image(Kind::Snakeoil));
    let mut scratch = Scratch::new();
    let disk = scratch.add(work_dir().join("snakeoil-under-generated.qcow2"));
    built::overlay_disk(&snakeoil.disk, &disk, None).unwrap();
    refused_by(&disk, "snakeoil-under-generated", &vars);
}

/// systemd-boot 252's own enrollment: the `.auth` files from `keys generate` in the ESP's
/// `loader/keys/auto/` and `secure-boot-enroll force` in loader.conf, booted with the empty
/// variable store (Setup Mode). systemd-boot enrolls db, KEK and PK and resets; the next boot
/// runs with Secure Boot enforced by those keys and the image (signed with that db key) boots.
#[test]
fn systemd_boot_auto_enrolls_generated_keys() {
    let (_, programs) = rke2_qemu_tests::need!(rke2_qemu_tests::test_inputs());
    let img = rke2_qemu_tests::need!(image(Kind::OtherKey));
    let keys = other_keys(&programs);
    let w = work_dir();
    let mut scratch = Scratch::new();
    // A real copy: its ESP is edited in place.
    let disk = scratch.add(w.join("auto-enroll.raw"));
    built::copy_disk(&img.disk, &disk, None).unwrap();
    let esp = img
        .manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == "esp")
        .unwrap();
    let esp_img = format!("{}@@{}", disk.display(), esp.first_lba * 512);
    run(Command::new("mmd").args(["-i", &esp_img, "::/loader/keys", "::/loader/keys/auto"]))
        .unwrap();
    for n in ["PK", "KEK", "db"] {
        run(Command::new("mcopy")
            .args(["-o", "-i", &esp_img])
            .arg(keys.join(format!("{n}.auth")))
            .arg(format!("::/loader/keys/auto/{n}.auth")))
        .unwrap();
    }
    let conf = run(Command::new("mtype").args(["-i", &esp_img, "::/loader/loader.conf"])).unwrap();
    let conf_file = w.join("auto-enroll-loader.conf");
    let mut text = String::from_utf8(conf).unwrap();
    text.push_str("secure-boot-enroll force\n");
    fs::write(&conf_file, text).unwrap();
    run(Command::new("mcopy")
        .args(["-o", "-i", &esp_img])
        .arg(&conf_file)
        .arg("::/loader/loader.conf"))
    .unwrap();

    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let enrolled = w.join("OVMF_VARS_auto_enrolled.fd");
    {
        let mut vm = start(
            &disk,
            "auto-enroll-setup",
            Boot::SecureUefi {
                vars: OVMF_VARS.into(),
            },
        );
        vm.wait_for(
            "Enrolling secure boot keys from directory",
            &["Linux version"],
            REFUSE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("no enrollment: {e}\n{}", vm.tail()));
        // systemd-boot resets after enrolling; QEMU runs with -no-reboot and exits.
        vm.wait_exit(REFUSE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no reset after enrollment: {e}\n{}", vm.tail()));
        assert!(
            !vm.console().contains("Linux version"),
            "a kernel started in Setup Mode"
        );
        fs::copy(vm.vars().unwrap(), &enrolled).unwrap();
    }
    drop(_one);
    boots_secured(img, "auto-enrolled", Boot::SecureUefi { vars: enrolled });
}
