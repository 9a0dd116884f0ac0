//! Manifest signatures: ed25519 over the exact bytes of the manifest embedded in the ESP.
//!
//! The ESP always holds a fixed-size signature file ([`paths::ESP_SIGNATURE`], all zeros =
//! unsigned) next to the manifest, so `rke2-image sign` can fill in an already built image in
//! place: it finds the file's clusters through the FAT and overwrites only their bytes. Next
//! to the image, `<stem>.manifest.json.sig` is the bare 64-byte signature of the published
//! manifest, checkable with `openssl pkeyutl -verify -rawin`.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rke2_image_contract::manifest::{EspFile, Manifest};
use rke2_image_contract::{partitions, paths};
use sha2::{Digest, Sha256};

use crate::limits::io_reason;

pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{key}: {file}: {message}")]
    Key {
        file: String,
        key: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Image { path: String, message: String },
}

fn key_err(file: &Path, key: &'static str, message: impl Into<String>) -> SignError {
    SignError::Key {
        file: file.display().to_string(),
        key,
        message: message.into(),
    }
}

/// Reads an ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes
/// it). `key` names the setting it came from (`signing.key`, `--key`) for the error.
pub fn load_private(path: &Path, key: &'static str) -> Result<SigningKey, SignError> {
    let text = fs::read_to_string(path).map_err(|e| {
        key_err(
            path,
            key,
            format!("cannot read the signing key: {}", io_reason(&e)),
        )
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|_| {
        key_err(
            path,
            key,
            "not an unencrypted ed25519 private key in PKCS#8 PEM; make one with `openssl genpkey -algorithm ed25519 -out KEY.pem`",
        )
    })
}

/// Reads an ed25519 public key (SubjectPublicKeyInfo PEM, `openssl pkey -pubout`).
pub fn load_public(path: &Path, key: &'static str) -> Result<VerifyingKey, SignError> {
    let text = fs::read_to_string(path).map_err(|e| {
        key_err(
            path,
            key,
            format!("cannot read the public key: {}", io_reason(&e)),
        )
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|_| {
        key_err(
            path,
            key,
            "not an ed25519 public key in PEM; derive it with `openssl pkey -in KEY.pem -pubout -out PUB.pem`",
        )
    })
}

/// `key` as SubjectPublicKeyInfo PEM, byte for byte what `openssl pkey -pubout` writes.
pub fn public_pem(key: &VerifyingKey) -> Vec<u8> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    // Encoding 32 bytes into a fixed DER structure cannot fail.
    key.to_public_key_pem(LineEnding::LF)
        .map(String::into_bytes)
        .unwrap_or_default()
}

pub fn sign(key: &SigningKey, data: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(data).to_bytes()
}

/// The ESP signature file for `sig` (`None`: the unsigned placeholder).
pub fn esp_block(sig: Option<&[u8; SIGNATURE_LEN]>) -> Vec<u8> {
    let mut b = vec![0u8; paths::ESP_SIGNATURE_SIZE];
    if let Some(s) = sig {
        b[..SIGNATURE_LEN].copy_from_slice(s);
    }
    b
}

/// What the ESP signature file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspSignature {
    Unsigned,
    Signed([u8; SIGNATURE_LEN]),
    /// Wrong size, or bytes after the signature: not something the builder wrote.
    Malformed(String),
}

pub fn parse_esp_block(b: &[u8]) -> EspSignature {
    if b.len() != paths::ESP_SIGNATURE_SIZE {
        return EspSignature::Malformed(format!(
            "{} bytes, expected {}",
            b.len(),
            paths::ESP_SIGNATURE_SIZE
        ));
    }
    if b.iter().all(|&x| x == 0) {
        return EspSignature::Unsigned;
    }
    if b[SIGNATURE_LEN..].iter().any(|&x| x != 0) {
        return EspSignature::Malformed("non-zero bytes after the 64-byte signature".into());
    }
    let mut s = [0u8; SIGNATURE_LEN];
    s.copy_from_slice(&b[..SIGNATURE_LEN]);
    EspSignature::Signed(s)
}

pub fn check(key: &VerifyingKey, data: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    key.verify(data, &Signature::from_bytes(sig)).is_ok()
}

/// The published manifest: the embedded one plus the image's own size and sha256 when it is
/// published (`image`; the embedded copy cannot carry it), then the other files published
/// beside it (`companions`: the SBOM, the qcow2).
pub fn published_manifest(
    embedded: &Manifest,
    image: Option<&File>,
    companions: Vec<EspFile>,
) -> std::io::Result<Vec<u8>> {
    let mut m = embedded.clone();
    m.outputs = match image {
        Some(f) => vec![image_record(embedded, f)?],
        None => Vec::new(),
    };
    m.outputs.extend(companions);
    let mut out = serde_json::to_vec_pretty(&m).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// The image's own `outputs` record: its size and sha256.
fn image_record(embedded: &Manifest, image: &File) -> std::io::Result<EspFile> {
    let size = image.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        image.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(EspFile {
        path: embedded.image.file.clone(),
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// Paths of the published manifest and signature next to `image` (`x.raw` -> `x.manifest.json`).
pub fn published_paths(image: &Path) -> (PathBuf, PathBuf) {
    let stem = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".raw").unwrap_or(&stem).to_string();
    let dir = image.parent().unwrap_or(Path::new("."));
    (
        dir.join(format!("{stem}.manifest.json")),
        dir.join(format!("{stem}.manifest.json.sig")),
    )
}

/// What `sign_image` did.
#[derive(Debug)]
pub struct Signed {
    /// The published manifest and signature rewritten next to the image, if there were any.
    pub published: Option<(PathBuf, PathBuf)>,
}

/// Signs an already built image in place: checks that the image and its embedded manifest
/// agree (`verify` without the signature), writes the signature into the reserved ESP file,
/// fsyncs, then refreshes the published manifest and signature next to the image when the
/// manifest is there.
pub fn sign_image(image: &Path, key: &SigningKey) -> Result<Signed, SignError> {
    let err = |message: String| SignError::Image {
        path: image.display().to_string(),
        message,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| err(format!("cannot open for writing: {}", io_reason(&e))))?;
    let size = file.metadata().map_err(|e| err(io_reason(&e)))?.len();
    let report = crate::verify::verify(&file, size, None);
    let blocking: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.area != paths::ESP_SIGNATURE)
        .map(|f| f.to_string())
        .collect();
    if !blocking.is_empty() {
        return Err(err(format!(
            "the image does not match its manifest, refusing to sign it: {}",
            blocking.join("; ")
        )));
    }
    let (manifest_bytes, sig_extents) = {
        let table = rke2_image_contract::gpt::Table::read(&file, size, partitions::SECTOR)
            .map_err(|e| err(format!("partition table: {e}")))?;
        let (_, esp) = table
            .find(partitions::ESP.label)
            .ok_or_else(|| err("no partition labelled `esp`".into()))?;
        let ss = table.sector_size;
        let loc = crate::fat::read_located(&file, esp.first_lba * ss, esp.sectors() * ss)
            .map_err(|e| err(format!("ESP: {e}")))?;
        let m = loc
            .files
            .get(paths::ESP_MANIFEST)
            .cloned()
            .ok_or_else(|| err(format!("no {} on the ESP", paths::ESP_MANIFEST)))?;
        let ext = loc
            .extents
            .get(paths::ESP_SIGNATURE)
            .cloned()
            .ok_or_else(|| {
                err(format!(
                "no {} on the ESP: the image was built before signatures were reserved; rebuild it",
                paths::ESP_SIGNATURE
            ))
            })?;
        (m, ext)
    };
    let total: u64 = sig_extents.iter().map(|e| e.1).sum();
    if total != paths::ESP_SIGNATURE_SIZE as u64 {
        return Err(err(format!(
            "{} holds {total} bytes, expected {}",
            paths::ESP_SIGNATURE,
            paths::ESP_SIGNATURE_SIZE
        )));
    }
    let sig = sign(key, &manifest_bytes);
    let block = esp_block(Some(&sig));
    let mut pos = 0usize;
    for (at, len) in &sig_extents {
        let len = *len as usize;
        file.write_all_at(&block[pos..pos + len], *at)
            .map_err(|e| {
                err(format!(
                    "writing the signature at byte {at}: {}",
                    io_reason(&e)
                ))
            })?;
        pos += len;
    }
    file.sync_all()
        .map_err(|e| err(format!("fsync: {}", io_reason(&e))))?;
    drop(file);

    let (mpath, spath) = published_paths(image);
    if !mpath.exists() {
        return Ok(Signed { published: None });
    }
    let embedded: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| err(format!("{}: {e}", paths::ESP_MANIFEST)))?;
    // The files published beside the image keep their records (signing changes only the image).
    let companions: Vec<EspFile> = fs::read(&mpath)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .map(|m| {
            m.outputs
                .into_iter()
                .filter(|o| o.path != embedded.image.file)
                .collect()
        })
        .unwrap_or_default();
    let published = File::open(image)
        .and_then(|f| published_manifest(&embedded, Some(&f), companions))
        .map_err(|e| err(format!("hashing the image: {}", io_reason(&e))))?;
    let psig = sign(key, &published);
    // Signature first: a crash in between leaves the old manifest with a signature that does
    // not match it (refused), never an unsigned-looking pair.
    crate::publish::write_atomic(&spath, &psig).map_err(|e| SignError::Image {
        path: spath.display().to_string(),
        message: io_reason(&e),
    })?;
    crate::publish::write_atomic(&mpath, &published).map_err(|e| SignError::Image {
        path: mpath.display().to_string(),
        message: io_reason(&e),
    })?;
    Ok(Signed {
        published: Some((mpath, spath)),
    })
}
