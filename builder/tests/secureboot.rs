//! Secure Boot keys: `keys generate` output checked with openssl and efitools, the key
//! checks the build runs before writing anything (missing, encrypted, mismatched), and signing
//! that gives the same bytes for the same key (checked with `sbverify`, which hashes PE files
//! the way EDK2 firmware does, and with `cmp` on two whole signed image builds and their update
//! bundles, whose slot b UKI is signed too).

#![allow(clippy::unwrap_used)]

use rke2_image::secureboot::{self, SignError, SigningKeys};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup-host installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn generate_writes_enrollable_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let g = secureboot::generate(dir.path(), "test").unwrap();
    assert_eq!(g.files.len(), 15);
    for n in ["PK", "KEK", "db"] {
        let subject = ok(Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(dir.path().join(format!("{n}.crt"))));
        assert!(String::from_utf8_lossy(&subject).contains(&format!("test {n}")));
        // efitools reads the signature list back to the same certificate.
        let out = dir.path().join(format!("back-{n}"));
        ok(Command::new("sig-list-to-certs")
            .arg(dir.path().join(format!("{n}.esl")))
            .arg(&out));
        let back = std::fs::read(format!("{}-0.der", out.display())).unwrap();
        let cer = std::fs::read(dir.path().join(format!("{n}.cer"))).unwrap();
        assert_eq!(back, cer, "{n}.esl does not hold {n}.cer");
        assert!(
            std::fs::metadata(dir.path().join(format!("{n}.auth")))
                .unwrap()
                .len()
                > 0
        );
    }
    secureboot::check(&SigningKeys {
        key: dir.path().join("db.key"),
        cert: dir.path().join("db.crt"),
    })
    .unwrap();
    let again = secureboot::generate(dir.path(), "test").unwrap_err();
    assert!(again.to_string().contains("never overwritten"), "{again}");
}

fn keys(dir: &Path, key: &str, cert: &str) -> SigningKeys {
    SigningKeys {
        key: dir.join(key),
        cert: dir.join(cert),
    }
}

#[test]
fn bad_keys_are_refused_with_the_field_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for n in ["a", "b"] {
        ok(Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            ])
            .arg(format!("/CN={n}/"))
            .arg("-keyout")
            .arg(d.join(format!("{n}.key")))
            .arg("-out")
            .arg(d.join(format!("{n}.crt"))));
    }
    secureboot::check(&keys(d, "a.key", "a.crt")).unwrap();
    let e = secureboot::check(&keys(d, "missing.key", "a.crt")).unwrap_err();
    assert!(
        matches!(&e, SignError::Input { field: "key", .. })
            && e.to_string().contains("missing.key"),
        "{e}"
    );
    let e = secureboot::check(&keys(d, "a.key", "nope.crt")).unwrap_err();
    assert!(matches!(&e, SignError::Input { field: "cert", .. }), "{e}");
    let e = secureboot::check(&keys(d, "a.key", "b.crt")).unwrap_err();
    assert!(matches!(e, SignError::Mismatch { .. }), "{e}");
    // A certificate where the key belongs, and vice versa.
    let e = secureboot::check(&keys(d, "a.crt", "a.crt")).unwrap_err();
    assert!(matches!(&e, SignError::Input { field: "key", .. }), "{e}");
    let e = secureboot::check(&keys(d, "a.key", "a.key")).unwrap_err();
    assert!(matches!(&e, SignError::Input { field: "cert", .. }), "{e}");
    // An encrypted key is refused (no prompt), with the way out.
    ok(Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(d.join("a.key"))
        .arg("-out")
        .arg(d.join("enc.key")));
    let e = secureboot::check(&keys(d, "enc.key", "a.crt")).unwrap_err();
    assert!(e.to_string().contains("unencrypted"), "{e}");
}

const EPOCH: u64 = 1_767_225_600;

/// The base's systemd-boot (a PE file to sign), extracted under `to`.
fn systemd_boot(base: &Path, to: &Path) -> PathBuf {
    let member = format!("./{}", rke2_image_contract::paths::SYSTEMD_BOOT_EFI);
    ok(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(base)
        .arg("-C")
        .arg(to)
        .arg(&member));
    to.join(&member)
}

#[test]
fn signing_is_a_function_of_the_input_key_and_epoch() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let efi = fs::read(systemd_boot(&base, d)).unwrap();
    secureboot::generate(&d.join("keys"), "test").unwrap();
    let k = keys(&d.join("keys"), "db.key", "db.crt");
    let first = secureboot::sign(&k, &efi, "systemd-boot", EPOCH).unwrap();
    // Across a wall-clock second: a signer that records the current time would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = secureboot::sign(&k, &efi, "systemd-boot", EPOCH).unwrap();
    assert!(first == second, "two signatures of the same file differ");
    let signed = d.join("signed.efi");
    fs::write(&signed, &first).unwrap();
    ok(Command::new("sbverify")
        .arg("--cert")
        .arg(d.join("keys/db.crt"))
        .arg(&signed));
    // The signing time inside the PKCS#7 is the epoch (2026-01-01), not now.
    let p7 = d.join("sig.p7");
    ok(Command::new("sbattach")
        .arg("--detach")
        .arg(&p7)
        .arg(&signed));
    let text = String::from_utf8(ok(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print", "-in"])
        .arg(&p7)))
    .unwrap();
    assert!(text.contains("UTCTIME:Jan  1 00:00:00 2026 GMT"), "{text}");
    // Another epoch, another signature; another key is refused by sbverify.
    let later = secureboot::sign(&k, &efi, "systemd-boot", EPOCH + 1).unwrap();
    assert!(later != first);
    ok(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other/",
        ])
        .arg("-keyout")
        .arg(d.join("other.key"))
        .arg("-out")
        .arg(d.join("other.crt")));
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(d.join("other.crt"))
        .arg(&signed)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "sbverify accepted the wrong certificate"
    );
}

/// Builds `def` into `out` with `exe`; returns the image path.
fn build(exe: &Path, def: &Path, out: &Path) -> PathBuf {
    let stdout = ok(Command::new(exe)
        .arg("build")
        .arg(def)
        .arg("--output")
        .arg(out)
        .env_remove("SOURCE_DATE_EPOCH"));
    // One line per published output, the image first.
    let text = String::from_utf8(stdout).unwrap();
    PathBuf::from(text.lines().next().unwrap_or_default().trim())
}

#[test]
fn signed_image_builds_are_identical_and_verify() {
    let (Some(base), Some(progs)) = (
        rke2_testsupport::prereq::test_base(),
        rke2_testsupport::prereq::test_programs(),
    ) else {
        return;
    };
    // Under target/ so the binary can be hard-linked: alone in its directory, the build finds
    // no rke2-firstboot next to it (a debug one would not fit the root) and both builds agree.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    fs::create_dir(d.join("bin")).unwrap();
    let exe = d.join("bin/rke2-image");
    if fs::hard_link(env!("CARGO_BIN_EXE_rke2-image"), &exe).is_err() {
        fs::copy(env!("CARGO_BIN_EXE_rke2-image"), &exe).unwrap();
    }
    secureboot::generate(&d.join("keys"), "test").unwrap();
    // The update bundle (its slot b UKI is signed like slot a's) needs an ed25519 signing key.
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(d.join("keys/update.pem")));
    let def = d.join("image.yaml");
    fs::write(
        &def,
        format!(
            "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: sb\nversion: 1.0.0\nepoch: {EPOCH}\nbase:\n  archive: {}\nkernel:\n  cmdline:\n    - console=ttyS0,115200\ninitrd:\n  init: {}\noutput:\n  directory: out\n  formats: [raw, update]\nsigning:\n  key: keys/update.pem\nsecurity:\n  secureBoot:\n    key: keys/db.key\n    cert: keys/db.crt\n",
            base.display(),
            Path::new(&progs).join("rke2-init").display()
        ),
    )
    .unwrap();
    let a = build(&exe, &def, &d.join("out-a"));
    let b = build(&exe, &def, &d.join("out-b"));
    ok(Command::new("cmp").arg(&a).arg(&b));
    let bundle = |img: &Path| img.with_file_name("sb-1.0.0.update");
    ok(Command::new("cmp").arg(bundle(&a)).arg(bundle(&b)));
    ok(Command::new("tar")
        .arg("-xf")
        .arg(bundle(&a))
        .args(["-C"])
        .arg(d)
        .args(["uki-a.efi", "uki-b.efi"]));
    for uki in ["uki-a.efi", "uki-b.efi"] {
        ok(Command::new("sbverify")
            .arg("--cert")
            .arg(d.join("keys/db.crt"))
            .arg(d.join(uki)));
    }
    let manifest: rke2_image_contract::manifest::Manifest =
        serde_json::from_slice(&fs::read(a.with_file_name("sb-1.0.0.manifest.json")).unwrap())
            .unwrap();
    let esp = manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.label == "esp")
        .unwrap();
    let img = format!("{}@@{}", a.display(), esp.first_lba * 512);
    for (i, member) in [
        rke2_image_contract::paths::ESP_FALLBACK_BOOT,
        manifest.boot.entry.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let file = d.join(format!("member-{i}.efi"));
        ok(Command::new("mcopy")
            .args(["-o", "-n", "-i", &img])
            .arg(format!("::/{member}"))
            .arg(&file));
        ok(Command::new("sbverify")
            .arg("--cert")
            .arg(d.join("keys/db.crt"))
            .arg(&file));
    }
}
