//! Secure Boot keys: `keys generate` output checked with openssl and efitools, and the key
//! checks the build runs before writing anything (missing, encrypted, mismatched).

#![allow(clippy::unwrap_used)]

use rke2_image::secureboot::{self, SignError, SigningKeys};
use std::path::Path;
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
