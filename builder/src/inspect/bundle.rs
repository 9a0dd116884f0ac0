//! `inspect` and `verify` of an update bundle (`<name>-<version>.update`, the `update`
//! output): the ustar is read as a stream, `update.json` and its signature first, then every
//! member checked against `update.json` (name, order, size, sha256) as it passes. Nothing but
//! `update.json` and the signature is held in memory.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rke2_image_contract::update::{self, UpdateInfo};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::InspectError;
use crate::sign;

/// `update.json` is a few KiB; more is not one of ours.
const INFO_MAX: u64 = 1 << 20;

/// Whether `path` is an update bundle: a ustar whose first member is `update.json`.
pub fn is_bundle(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    let name_end = head[..100].iter().position(|b| *b == 0).unwrap_or(100);
    &head[..name_end] == update::INFO.as_bytes() && &head[257..262] == b"ustar"
}

/// A member as read back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
    /// Size and sha256 equal `update.json`'s record.
    pub ok: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleReport {
    pub file: String,
    pub size: u64,
    pub info: UpdateInfo,
    /// `verified`, `does not verify` or `not checked`.
    pub signature: String,
    pub members: Vec<MemberView>,
    /// Disagreements (empty when every member matches and, with a key, the signature verifies).
    pub problems: Vec<String>,
}

/// Reads the bundle at `path`; with `key`, checks the signature of `update.json` too.
pub fn inspect_bundle(
    path: &Path,
    key: Option<&VerifyingKey>,
) -> Result<BundleReport, InspectError> {
    let err = |message: String| InspectError::Image {
        path: path.display().to_string(),
        message,
    };
    let f = File::open(path).map_err(|e| err(crate::limits::io_reason(&e)))?;
    let size = f
        .metadata()
        .map_err(|e| err(crate::limits::io_reason(&e)))?
        .len();
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut entries = archive
        .entries()
        .map_err(|e| err(format!("not a tar archive: {e}")))?;
    let mut next = |want: &str| -> Result<tar::Entry<'_, _>, InspectError> {
        let e = entries
            .next()
            .ok_or_else(|| err(format!("ends before its member {want}")))?
            .map_err(|e| err(format!("cannot read the member after {want}'s place: {e}")))?;
        Ok(e)
    };

    let mut info_entry = next(update::INFO)?;
    let first = entry_name(&info_entry);
    if first != update::INFO {
        return Err(err(format!(
            "first member is {first:?}, not {}; not an update bundle",
            update::INFO
        )));
    }
    if info_entry.size() > INFO_MAX {
        return Err(err(format!(
            "{} is {} bytes; not an update bundle",
            update::INFO,
            info_entry.size()
        )));
    }
    let mut json = Vec::new();
    info_entry
        .read_to_end(&mut json)
        .map_err(|e| err(format!("{}: {e}", update::INFO)))?;
    drop(info_entry);
    let info: UpdateInfo = serde_json::from_slice(&json)
        .map_err(|e| err(format!("{}: not an update header: {e}", update::INFO)))?;
    let mut problems = Vec::new();
    if info.schema != update::SCHEMA {
        problems.push(format!(
            "{}: schema {:?}, expected {:?}",
            update::INFO,
            info.schema,
            update::SCHEMA
        ));
    }
    let listed: Vec<&str> = info.members.iter().map(|m| m.name.as_str()).collect();
    if listed != update::MEMBERS {
        problems.push(format!(
            "{} lists the members {listed:?}, expected {:?}",
            update::INFO,
            update::MEMBERS
        ));
    }

    let mut sig_entry = next(update::SIGNATURE)?;
    let sig_name = entry_name(&sig_entry);
    let mut sig = Vec::new();
    sig_entry
        .by_ref()
        .take(sign::SIGNATURE_LEN as u64 + 1)
        .read_to_end(&mut sig)
        .map_err(|e| err(format!("{}: {e}", update::SIGNATURE)))?;
    drop(sig_entry);
    let signature = if sig_name != update::SIGNATURE {
        problems.push(format!(
            "second member is {sig_name:?}, expected {}",
            update::SIGNATURE
        ));
        "missing".to_string()
    } else {
        match (<[u8; sign::SIGNATURE_LEN]>::try_from(&sig[..]), key) {
            (Err(_), _) => {
                problems.push(format!(
                    "{} is {} bytes, expected {}",
                    update::SIGNATURE,
                    sig.len(),
                    sign::SIGNATURE_LEN
                ));
                "malformed".to_string()
            }
            (Ok(_), None) => format!(
                "present, {} bytes; not checked (verify with `rke2-image verify --key PUB.pem`)",
                sign::SIGNATURE_LEN
            ),
            (Ok(s), Some(k)) => {
                if sign::check(k, &json, &s) {
                    "verified".to_string()
                } else {
                    problems.push(format!(
                        "{}: the signature does not verify with the given key (signed with another key, or update.json was changed)",
                        update::SIGNATURE
                    ));
                    "does not verify".to_string()
                }
            }
        }
    };

    let mut members = Vec::new();
    for want in update::MEMBERS {
        let mut e = next(want)?;
        let name = entry_name(&e);
        let mode = e.header().mode().unwrap_or(0);
        let mut h = Sha256::new();
        let n = std::io::copy(&mut e, &mut h).map_err(|x| err(format!("{name}: {x}")))?;
        let sha = hex::encode(h.finalize());
        let ok = match info.member(&name) {
            _ if name != want => {
                problems.push(format!("member {name:?} where {want} belongs"));
                false
            }
            None => {
                problems.push(format!("member {name}: not listed in {}", update::INFO));
                false
            }
            Some(m) if m.size != n => {
                problems.push(format!(
                    "member {name}: {n} bytes, {} says {}",
                    update::INFO,
                    m.size
                ));
                false
            }
            Some(m) if m.sha256 != sha => {
                problems.push(format!(
                    "member {name}: sha256 {sha}, {} says {} (the member was changed)",
                    update::INFO,
                    m.sha256
                ));
                false
            }
            Some(_) => true,
        };
        members.push(MemberView {
            name,
            size: n,
            sha256: sha,
            mode,
            ok,
        });
    }
    if let Some(extra) = entries.next() {
        let what = match extra {
            Ok(e) => format!("{:?}", entry_name(&e)),
            Err(e) => format!("an unreadable entry ({e})"),
        };
        problems.push(format!(
            "a member after {}: {what}; a bundle ends there",
            update::ROOT
        ));
    }
    for (m, want) in [
        (update::ROOT, info.root_size),
        (update::VERITY, info.verity_size),
    ] {
        if info.member(m).is_some_and(|x| x.size != want) {
            problems.push(format!(
                "{}: {m} is listed with another size than {}",
                update::INFO,
                if m == update::ROOT {
                    "rootSize"
                } else {
                    "veritySize"
                }
            ));
        }
    }
    Ok(BundleReport {
        file: path.display().to_string(),
        size,
        info,
        signature,
        members,
        problems,
    })
}

fn entry_name<R: Read>(e: &tar::Entry<'_, R>) -> String {
    e.path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Human-readable form of a bundle report.
pub fn render_bundle(r: &BundleReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let i = &r.info;
    let _ = writeln!(
        s,
        "bundle     {} ({} MiB, update bundle)",
        r.file,
        r.size.div_ceil(1 << 20)
    );
    let _ = writeln!(
        s,
        "image      {} {} ({})",
        i.image, i.version, i.architecture
    );
    let _ = writeln!(s, "epoch      {}", i.epoch);
    let _ = writeln!(s, "root hash  {}", i.root_hash);
    let _ = writeln!(s, "root       {} bytes", i.root_size);
    let _ = writeln!(s, "verity     {} bytes", i.verity_size);
    let _ = writeln!(s, "signature  {}", r.signature);
    let _ = writeln!(s, "members");
    for m in &r.members {
        let _ = writeln!(
            s,
            "  {:<14} {:>12}  {}  {}",
            m.name,
            m.size,
            m.sha256,
            if m.ok { "ok" } else { "MISMATCH" }
        );
    }
    let _ = writeln!(s, "cmdlines");
    for c in &i.cmdlines {
        let _ = writeln!(s, "  {}: {}", c.slot, c.cmdline);
    }
    if !r.problems.is_empty() {
        let _ = writeln!(s, "problems");
        for p in &r.problems {
            let _ = writeln!(s, "  {p}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::update::{write, Pieces};
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// A bundle of small pieces, and the key that signed it.
    fn bundle() -> (Vec<u8>, ed25519_dalek::SigningKey) {
        let raw = tempfile::tempfile().unwrap();
        raw.write_all_at(&[7u8; 8192], 0).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let mut out = Vec::new();
        write(
            &Pieces {
                raw: &raw,
                name: "n",
                version: "1",
                epoch: 0,
                root_hash: "ab",
                manifest: b"{}\n",
                uki_a: ("a", b"MZa"),
                uki_b: ("b", b"MZb"),
                verity: (4096, 4096),
                root: (0, 4096),
                key: &key,
            },
            &mut out,
        )
        .unwrap();
        (out, key)
    }

    fn read(bytes: &[u8], key: Option<&VerifyingKey>) -> BundleReport {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        assert!(is_bundle(f.path()));
        inspect_bundle(f.path(), key).unwrap()
    }

    #[test]
    fn reads_checks_and_names_what_is_wrong() {
        let (good, key) = bundle();
        let r = read(&good, Some(&key.verifying_key()));
        assert_eq!((r.signature.as_str(), r.problems.len()), ("verified", 0));
        assert!(r.members.iter().all(|m| m.ok && m.mode == 0o444));
        let other = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]);
        let r = read(&good, Some(&other.verifying_key()));
        assert_eq!(r.signature, "does not verify");

        // update.json edited (same length): the signature no longer verifies.
        let mut edited = good.clone();
        let at = edited
            .windows(10)
            .position(|w| w == b"\"image\": \"")
            .unwrap();
        edited[at + 10] = b'm';
        let r = read(&edited, Some(&key.verifying_key()));
        assert_eq!(r.signature, "does not verify", "{:?}", r.problems);

        // A byte of uki-b.efi changed: the member is named.
        let mut bad = good.clone();
        let at = bad.windows(3).position(|w| w == b"MZb").unwrap();
        bad[at + 2] = b'c';
        let r = read(&bad, None);
        assert!(
            r.problems
                .iter()
                .any(|p| p.starts_with("member uki-b.efi: sha256")),
            "{:?}",
            r.problems
        );

        // Not a bundle: a tar whose first member is something else.
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("other").unwrap();
        h.set_size(0);
        h.set_cksum();
        t.append(&h, &[][..]).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&t.into_inner().unwrap()).unwrap();
        assert!(!is_bundle(f.path()));
        assert!(inspect_bundle(f.path(), None).is_err());
    }
}
