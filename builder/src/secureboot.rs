//! Secure Boot with the operator's own keys: the definition's `security.secureBoot` key and
//! certificate sign systemd-boot and every UKI with `osslsigncode`, and
//! `rke2-image keys generate` makes a PK/KEK/db set with the files firmware (or systemd-boot's
//! `secure-boot-enroll`) needs to enroll it.
//!
//! Signed images are reproducible for the same key. An Authenticode signature is a PKCS#7
//! SignedData whose only varying part is the `signingTime` attribute: RSA PKCS#1 v1.5 itself is
//! deterministic. sbsign 0.9.4 takes the wall clock for it and has no option to set it, so the
//! build signs with `osslsigncode sign -time EPOCH` (the image's build epoch, already in
//! bookworm's 2.5), which writes that time instead. Chosen over running sbsign under libfaketime
//! because it is an explicit option of the signer (no LD_PRELOAD that silently stops applying
//! if the tool is linked differently, no frozen-clock mode to get right) and over writing the
//! SignedData ourselves because the signer stays an outside, widely used tool. osslsigncode
//! hashes the file from the headers to the certificate table in one run; Authenticode as EDK2
//! and `sbverify` compute it hashes each section's raw data, then any tail: the same bytes when
//! the sections lie back to back, as in systemd-boot and our UKIs (uki.rs). The tests check
//! every signed file with `sbverify --cert` and boot them under OVMF with Secure Boot on.
//! Bookworm's osslsigncode 2.5 and backports' 2.9 give different (each reproducible) bytes:
//! reproducibility is per host toolchain, like every other tool the build runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The definition's `security.secureBoot` (paths resolved against the definition's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys {
    pub key: PathBuf,
    pub cert: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("security.secureBoot.{field}: {file}: {message}")]
    Input {
        field: &'static str,
        file: String,
        message: String,
    },
    #[error("security.secureBoot: the private key {key} does not belong to the certificate {cert} (their public keys differ); give the certificate issued for this key")]
    Mismatch { key: String, cert: String },
    #[error("running {tool}: {message} (scripts/setup-host installs it)")]
    Tool { tool: String, message: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
}

fn run(cmd: &mut Command, tool: &str) -> Result<Result<Vec<u8>, String>, SignError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SignError::Tool {
            tool: tool.into(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(Ok(out.stdout))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        // First line only: openssl's later lines are its internal error stack.
        Ok(Err(err.lines().next().unwrap_or("").trim().to_string()))
    }
}

/// Checks that the key and certificate are readable PEM and belong together. Runs before the
/// build writes anything.
pub fn check(keys: &SigningKeys) -> Result<(), SignError> {
    let input = |field: &'static str, path: &Path, message: String| SignError::Input {
        field,
        file: path.display().to_string(),
        message,
    };
    for (field, path) in [("key", &keys.key), ("cert", &keys.cert)] {
        fs::File::open(path).map_err(|e| input(field, path, format!("cannot read: {e}")))?;
    }
    // `-passin pass:` so an encrypted key fails here instead of prompting.
    let key_pub = run(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-passin", "pass:", "-in"])
            .arg(&keys.key),
        "openssl",
    )?
    .map_err(|e| {
        input(
            "key",
            &keys.key,
            format!("not an unencrypted PEM private key ({e}); decrypt it first, e.g. `openssl pkey -in KEY -out db.key`"),
        )
    })?;
    let cert_pub = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&keys.cert),
        "openssl",
    )?
    .map_err(|e| input("cert", &keys.cert, format!("not a PEM certificate ({e})")))?;
    if key_pub != cert_pub {
        return Err(SignError::Mismatch {
            key: keys.key.display().to_string(),
            cert: keys.cert.display().to_string(),
        });
    }
    Ok(())
}

/// Returns `data` (a PE file) with an Authenticode signature by `keys` appended. The
/// signature's `signingTime` is `epoch` (seconds since 1970), so the same inputs and key give
/// the same bytes.
pub fn sign(keys: &SigningKeys, data: &[u8], what: &str, epoch: u64) -> Result<Vec<u8>, SignError> {
    let io = |message: String| SignError::Io {
        what: what.to_string(),
        message,
    };
    let dir = tempfile::tempdir().map_err(|e| io(format!("temporary directory: {e}")))?;
    let input = dir.path().join("unsigned.efi");
    let output = dir.path().join("signed.efi");
    fs::write(&input, data).map_err(|e| io(e.to_string()))?;
    run(
        Command::new("osslsigncode")
            // `-time`: the PKCS#7 signingTime, else the wall clock (see the module doc).
            .args(["sign", "-h", "sha256", "-time"])
            .arg(epoch.to_string())
            .arg("-key")
            .arg(&keys.key)
            .arg("-certs")
            .arg(&keys.cert)
            .arg("-in")
            .arg(&input)
            .arg("-out")
            .arg(&output),
        "osslsigncode",
    )?
    .map_err(|e| io(format!("osslsigncode failed: {e}")))?;
    fs::read(&output).map_err(|e| io(e.to_string()))
}

/// What `keys generate` wrote.
#[derive(Debug)]
pub struct Generated {
    pub files: Vec<PathBuf>,
}

/// The owner GUID recorded in the signature lists (any fixed GUID identifies "us").
pub const OWNER_GUID: &str = "8b3f0f3e-6a51-4d7c-9d55-2b8c1e4f6a10";

/// Creates `dir/{PK,KEK,db}.{key,crt,cer,esl,auth}`: RSA-2048 keys with self-signed
/// certificates (`.crt` PEM for the signer and the definition, `.cer` DER for firmware menus),
/// EFI signature lists, and `.auth` updates signed for enrollment (PK by itself, KEK by PK,
/// db by KEK). `db.key`/`db.crt` are what `security.secureBoot` takes. The `.auth` files carry
/// the current time (authenticated variables need one); they are not image outputs.
/// Refuses a directory that already holds any of these files (keys are never overwritten).
pub fn generate(dir: &Path, common_name: &str) -> Result<Generated, SignError> {
    let io = |what: &Path, message: String| SignError::Io {
        what: what.display().to_string(),
        message,
    };
    fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    let names = ["PK", "KEK", "db"];
    for n in names {
        for ext in ["key", "crt", "cer", "esl", "auth"] {
            let p = dir.join(format!("{n}.{ext}"));
            if p.exists() {
                return Err(io(
                    &p,
                    "already exists; keys are never overwritten: choose an empty directory".into(),
                ));
            }
        }
    }
    let mut files = Vec::new();
    let tool_fail = |tool: &str, e: String| SignError::Tool {
        tool: tool.into(),
        message: e,
    };
    for n in names {
        let key = dir.join(format!("{n}.key"));
        let crt = dir.join(format!("{n}.crt"));
        let cer = dir.join(format!("{n}.cer"));
        let esl = dir.join(format!("{n}.esl"));
        run(
            Command::new("openssl")
                .args([
                    "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days",
                    "3650", "-subj",
                ])
                .arg(format!("/CN={common_name} {n}/"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&crt),
            "openssl",
        )?
        .map_err(|e| tool_fail("openssl req", e))?;
        run(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&crt)
                .arg("-out")
                .arg(&cer),
            "openssl",
        )?
        .map_err(|e| tool_fail("openssl x509", e))?;
        run(
            Command::new("cert-to-efi-sig-list")
                .args(["-g", OWNER_GUID])
                .arg(&crt)
                .arg(&esl),
            "cert-to-efi-sig-list (efitools)",
        )?
        .map_err(|e| tool_fail("cert-to-efi-sig-list", e))?;
        files.extend([key, crt, cer, esl]);
    }
    // PK signs itself and KEK; KEK signs db (UEFI 2.x authenticated variables).
    for (var, signer) in [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")] {
        let auth = dir.join(format!("{var}.auth"));
        run(
            Command::new("sign-efi-sig-list")
                .args(["-g", OWNER_GUID, "-k"])
                .arg(dir.join(format!("{signer}.key")))
                .arg("-c")
                .arg(dir.join(format!("{signer}.crt")))
                .arg(var)
                .arg(dir.join(format!("{var}.esl")))
                .arg(&auth),
            "sign-efi-sig-list (efitools)",
        )?
        .map_err(|e| tool_fail("sign-efi-sig-list", e))?;
        files.push(auth);
    }
    files.sort();
    Ok(Generated { files })
}
