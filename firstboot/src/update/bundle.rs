//! Streaming reader of an update bundle (`contract::update`): `update.json` and its signature
//! first, the signature checked against every trusted key, then each member in order, hashed as
//! it streams past. Nothing a caller sees before [`read`]'s `check` callback has been signed.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use rke2_image_contract::update::{self as contract, Member, UpdateInfo};
use sha2::{Digest, Sha256};

/// Largest `update.json` accepted (it lists five members and two command lines).
const MAX_INFO: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("not an update bundle: {0}")]
    Format(String),
    #[error(
        "the signature of update.json verifies against none of the trusted keys in {dir} \
         (tried: {tried}); the bundle was signed with another key — add its public half to the \
         image definition's update.trustedKeys, or build the bundle with this image's signing.key"
    )]
    Untrusted { dir: String, tried: String },
    #[error("no trusted keys: {dir} has no *.pem file (the image was built without signing.key)")]
    NoKeys { dir: String },
    #[error("trusted key {file}: {why}")]
    BadKey { file: String, why: String },
    #[error("member {name}: {why} (the bundle is corrupt or was altered after signing)")]
    Member { name: String, why: String },
    /// The caller's `check` or `sink` refused.
    #[error("{0}")]
    Refused(String),
}

/// The trusted public keys (`*.pem` of `dir`, sorted by file name).
pub fn load_keys(dir: &Path) -> Result<Vec<(String, VerifyingKey)>, BundleError> {
    let shown = dir.display().to_string();
    let rd = std::fs::read_dir(dir).map_err(|err| BundleError::Io {
        what: format!("reading the trusted keys directory {shown}"),
        err,
    })?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(BundleError::NoKeys { dir: shown });
    }
    let mut out = Vec::new();
    for p in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&p).map_err(|err| BundleError::Io {
            what: format!("reading {}", p.display()),
            err,
        })?;
        let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| BundleError::BadKey {
            file: p.display().to_string(),
            why: format!("not an ed25519 SubjectPublicKeyInfo PEM ({e})"),
        })?;
        out.push((name, key));
    }
    Ok(out)
}

/// Which key verified `info` against `sig`.
pub fn verify_signature(keys_dir: &Path, info: &[u8], sig: &[u8]) -> Result<String, BundleError> {
    let keys = load_keys(keys_dir)?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| {
        BundleError::Format(format!(
            "{} is {} bytes, not a 64-byte ed25519 signature",
            contract::SIGNATURE,
            sig.len()
        ))
    })?;
    let sig = Signature::from_bytes(&sig);
    for (name, k) in &keys {
        if k.verify_strict(info, &sig).is_ok() {
            return Ok(name.clone());
        }
    }
    Err(BundleError::Untrusted {
        dir: keys_dir.display().to_string(),
        tried: keys
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A reader that hashes and counts what passes through.
struct Hashing<'a, R: Read> {
    inner: &'a mut R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads the bundle from `r`: verifies `update.json`'s signature against `keys_dir`, parses it
/// and hands it to `check` (which may refuse: nothing has been acted on yet), then passes each
/// member to `sink` in bundle order as a reader of exactly its bytes. Whatever `sink` leaves
/// unread is drained; each member's size and sha256 are compared with `update.json` once it has
/// streamed past, so a `sink` must not treat its data as good until `read` returns Ok.
/// Returns the signed info and the name of the key that verified it.
pub fn read<R: Read>(
    r: R,
    keys_dir: &Path,
    check: &mut dyn FnMut(&UpdateInfo) -> Result<(), String>,
    sink: &mut dyn FnMut(&Member, &mut dyn Read) -> Result<(), String>,
) -> Result<(UpdateInfo, String), BundleError> {
    let mut ar = tar::Archive::new(r);
    let mut entries = ar.entries().map_err(|err| BundleError::Io {
        what: "reading the bundle".into(),
        err,
    })?;
    let mut next = |want: &str| -> Result<tar::Entry<'_, R>, BundleError> {
        let e = entries
            .next()
            .ok_or_else(|| {
                BundleError::Format(format!(
                    "it ends where member {want} should begin (truncated?)"
                ))
            })?
            .map_err(|err| BundleError::Io {
                what: format!("reading the bundle header of member {want}"),
                err,
            })?;
        let name = e
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != want {
            return Err(BundleError::Format(format!(
                "member {name:?} where {want} belongs (members must be {}, {}, {})",
                contract::INFO,
                contract::SIGNATURE,
                contract::MEMBERS.join(", ")
            )));
        }
        Ok(e)
    };
    let small = |e: &mut tar::Entry<'_, R>, name: &str, max: u64| -> Result<Vec<u8>, BundleError> {
        if e.size() > max {
            return Err(BundleError::Format(format!(
                "{name} is {} bytes (at most {max})",
                e.size()
            )));
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v).map_err(|err| BundleError::Io {
            what: format!("reading member {name}"),
            err,
        })?;
        if v.len() as u64 != e.size() {
            return Err(BundleError::Format(format!(
                "it ends inside member {name} ({} of {} bytes; truncated)",
                v.len(),
                e.size()
            )));
        }
        Ok(v)
    };
    let info_bytes = {
        let mut e = next(contract::INFO)?;
        small(&mut e, contract::INFO, MAX_INFO)?
    };
    let sig = {
        let mut e = next(contract::SIGNATURE)?;
        small(&mut e, contract::SIGNATURE, 64)?
    };
    let key = verify_signature(keys_dir, &info_bytes, &sig)?;
    let info: UpdateInfo = serde_json::from_slice(&info_bytes)
        .map_err(|e| BundleError::Format(format!("{} (signed): {e}", contract::INFO)))?;
    if info.schema != contract::SCHEMA {
        return Err(BundleError::Format(format!(
            "{} has schema {:?}; this node reads {}",
            contract::INFO,
            info.schema,
            contract::SCHEMA
        )));
    }
    let names: Vec<&str> = info.members.iter().map(|m| m.name.as_str()).collect();
    if names != contract::MEMBERS {
        return Err(BundleError::Format(format!(
            "{} lists members {names:?}, expected {:?}",
            contract::INFO,
            contract::MEMBERS
        )));
    }
    check(&info).map_err(BundleError::Refused)?;
    for m in &info.members {
        let mut e = next(&m.name)?;
        if e.size() != m.size {
            return Err(BundleError::Member {
                name: m.name.clone(),
                why: format!("{} bytes, update.json says {}", e.size(), m.size),
            });
        }
        let mut h = Hashing {
            inner: &mut e,
            sha: Sha256::new(),
            n: 0,
        };
        sink(m, &mut h).map_err(BundleError::Refused)?;
        io::copy(&mut h, &mut io::sink()).map_err(|err| BundleError::Io {
            what: format!("reading member {}", m.name),
            err,
        })?;
        if h.n != m.size {
            return Err(BundleError::Member {
                name: m.name.clone(),
                why: format!("only {} of {} bytes arrived (truncated)", h.n, m.size),
            });
        }
        let got = hex::encode(h.sha.finalize());
        if got != m.sha256 {
            return Err(BundleError::Member {
                name: m.name.clone(),
                why: format!("sha256 {got}, update.json says {}", m.sha256),
            });
        }
    }
    Ok((info, key))
}
