//! The image's software bill of materials: SPDX 2.3 JSON, published as
//! `<name>-<version>.spdx.json` beside the image and embedded on the ESP ([`ESP_PATH`]).
//!
//! Lists every Debian package dpkg records as installed in the composed root (name, version,
//! architecture, a `pkg:deb` purl, and `licenseDeclared` from the package's machine-readable
//! DEP-5 `copyright` file), the RKE2 release (version, origin, the supervisor binary's sha256),
//! every preloaded air-gap tarball (sha256) and the container images in it (the `RepoTags` and
//! config blob id of its `manifest.json`), and our programs `rke2-init` and `rke2-firstboot`.
//!
//! Reproducible: the only time is the build epoch, every id derives from names, and the
//! document namespace is the sha256 of the document itself.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use rke2_image_contract::manifest;
use rke2_image_contract::paths::AIRGAP_IMAGES;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::payload::airgap;
use crate::tree::{Blob, Kind, Tree};

/// Where the SBOM is embedded on the ESP.
pub const ESP_PATH: &str = "rke2-image/sbom.spdx.json";
/// Suffix of the published SBOM: `<name>-<version>.spdx.json`.
pub const SUFFIX: &str = "spdx.json";
const DPKG_STATUS: &str = "var/lib/dpkg/status";
/// A DEP-5 file larger than this is not parsed (the biggest in bookworm is ~1 MB).
const COPYRIGHT_LIMIT: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("reading the image tree: {0}")]
    Read(#[from] io::Error),
    #[error(transparent)]
    TooLarge(#[from] crate::limits::TooLarge),
    #[error("encoding the SBOM: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the SBOM describes besides the tree.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub epoch: u64,
    /// The RKE2 release (version, origin), when the image has one.
    pub rke2: Option<(&'a str, &'a str)>,
    /// The build's manifest inputs: `init` and `node-agent` become the programs.
    pub inputs: &'a [manifest::Input],
}

/// The document and what the build log should say about it.
pub struct Sbom {
    pub json: Vec<u8>,
    pub debs: usize,
    pub images: usize,
    pub notes: Vec<String>,
}

/// A package of `var/lib/dpkg/status` with `Status: install ok installed`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// Installed packages of a dpkg status file, sorted by name and architecture.
pub fn parse_status(text: &str) -> Vec<Deb> {
    let mut out = BTreeSet::new();
    for para in paragraphs(text) {
        let get = |k: &str| {
            para.iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.trim().to_string())
        };
        if get("Status").as_deref() != Some("install ok installed") {
            continue;
        }
        if let (Some(name), Some(version)) = (get("Package"), get("Version")) {
            out.insert(Deb {
                name,
                version,
                arch: get("Architecture").unwrap_or_else(|| "all".into()),
            });
        }
    }
    out.into_iter().collect()
}

/// RFC 822-style paragraphs (dpkg status, DEP-5): fields with continuation lines joined by
/// `\n`, the first line's value first.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if line.starts_with('#') {
            // Comment lines are allowed in DEP-5.
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Percent-encoding of a purl component: everything but `A-Za-z0-9.-_~` (so `+` is `%2B`,
/// `:` is `%3A`).
pub fn purl_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/<name>@<version>?arch=<arch>&distro=<distro>`.
pub fn deb_purl(d: &Deb, distro: Option<&str>) -> String {
    let mut p = format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_encode(&d.name),
        purl_encode(&d.version),
        purl_encode(&d.arch)
    );
    if let Some(distro) = distro {
        p.push_str(&format!("&distro={}", purl_encode(distro)));
    }
    p
}

/// `pkg:docker/<path>@<tag>?repository_url=<registry>` of a reference such as
/// `rancher/mirrored-pause:3.6` (registry `docker.io` when it has none).
pub fn docker_purl(reference: &str) -> String {
    let full = airgap::normalize_ref(reference);
    let (registry, rest) = full.split_once('/').unwrap_or(("docker.io", &full));
    let (path, version) = match rest.rsplit_once('@') {
        Some((p, d)) => (p, d),
        None => {
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[slash..].rfind(':') {
                Some(i) => (&rest[..slash + i], &rest[slash + i + 1..]),
                None => (rest, "latest"),
            }
        }
    };
    let path: Vec<String> = path.split('/').map(purl_encode).collect();
    format!(
        "pkg:docker/{}@{}?repository_url={}",
        path.join("/"),
        purl_encode(version),
        purl_encode(registry)
    )
}

/// The licenses a machine-readable (DEP-5) copyright file declares, as DEP-5 short-name
/// expressions (e.g. `BSD-3-clause or GPL-2`), sorted and distinct; `None` when the file is not
/// machine-readable (no `Format:` header).
pub fn dep5_licenses(text: &str) -> Option<Vec<String>> {
    let paras = paragraphs(text);
    let header = paras.first()?;
    if !header.iter().any(|(k, _)| k.eq_ignore_ascii_case("Format")) {
        return None;
    }
    let mut out = BTreeSet::new();
    for (i, p) in paras.iter().enumerate() {
        // The header's License (the whole work's) and every Files paragraph's; standalone
        // License paragraphs only hold texts.
        let is_files = p.iter().any(|(k, _)| k.eq_ignore_ascii_case("Files"));
        if i != 0 && !is_files {
            continue;
        }
        if let Some((_, v)) = p.iter().find(|(k, _)| k.eq_ignore_ascii_case("License")) {
            let first = v.lines().next().unwrap_or("").trim();
            if !first.is_empty() {
                out.insert(first.to_string());
            }
        }
    }
    Some(out.into_iter().collect())
}

/// DEP-5 short names (lower case) that have an SPDX identifier.
const SPDX_IDS: &[(&str, &str)] = &[
    ("agpl-3", "AGPL-3.0-only"),
    ("agpl-3+", "AGPL-3.0-or-later"),
    ("apache-2", "Apache-2.0"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsl-1.0", "BSL-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("expat", "MIT"),
    ("fsfap", "FSFAP"),
    ("fsfullr", "FSFULLR"),
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("isc", "ISC"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("mit", "MIT"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("x11", "X11"),
    ("zlib", "Zlib"),
];

/// `with <name> exception` names (lower case) that have an SPDX exception identifier.
const SPDX_EXCEPTIONS: &[(&str, &str)] = &[
    ("bison", "Bison-exception-2.2"),
    ("classpath", "Classpath-exception-2.0"),
    ("font", "Font-exception-2.0"),
    ("linux-syscall-note", "Linux-syscall-note"),
];

fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// `name` with every character SPDX ids do not allow (outside `A-Za-z0-9.-`) as `-`.
fn idstring(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `LicenseRef-<name>` with the characters SPDX allows.
fn license_ref(name: &str) -> String {
    format!("LicenseRef-{}", idstring(name))
}

/// One DEP-5 license expression as an SPDX expression: `or`/`and` become `OR`/`AND`, known
/// short names their SPDX ids, `X with Y exception` `X WITH Y` when both are known; any other
/// term becomes a `LicenseRef-` (recorded in `refs` with the DEP-5 name it stands for).
pub fn to_spdx(expr: &str, refs: &mut BTreeMap<String, String>) -> String {
    let words: Vec<&str> = expr
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut term: Vec<&str> = Vec::new();
    let mut flush = |term: &mut Vec<&str>, out: &mut Vec<String>| {
        if term.is_empty() {
            return;
        }
        let mapped = match term.as_slice() {
            [one] => lookup(SPDX_IDS, one).map(str::to_string),
            [lic, with, exc @ .., last]
                if with.eq_ignore_ascii_case("with") && last.eq_ignore_ascii_case("exception") =>
            {
                match (
                    lookup(SPDX_IDS, lic),
                    lookup(SPDX_EXCEPTIONS, &exc.join("-")),
                ) {
                    (Some(l), Some(e)) => Some(format!("{l} WITH {e}")),
                    _ => None,
                }
            }
            _ => None,
        };
        out.push(mapped.unwrap_or_else(|| {
            let name = term.join(" ");
            let id = license_ref(&name);
            refs.entry(id.clone()).or_insert(name);
            id
        }));
        term.clear();
    };
    for w in words {
        if w.eq_ignore_ascii_case("or") || w.eq_ignore_ascii_case("and") {
            flush(&mut term, &mut out);
            out.push(w.to_ascii_uppercase());
        } else {
            term.push(w);
        }
    }
    flush(&mut term, &mut out);
    // Dangling operators (a malformed field) are dropped rather than emitted.
    while out.last().is_some_and(|w| w == "OR" || w == "AND") {
        out.pop();
    }
    while out.first().is_some_and(|w| w == "OR" || w == "AND") {
        out.remove(0);
    }
    out.join(" ")
}

/// A package's declared license: the conjunction of its DEP-5 expressions.
fn declared(exprs: &[String], refs: &mut BTreeMap<String, String>) -> String {
    let parts: BTreeSet<String> = exprs
        .iter()
        .map(|e| to_spdx(e, refs))
        .filter(|e| !e.is_empty())
        .collect();
    match parts.len() {
        0 => "NOASSERTION".into(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => parts
            .into_iter()
            .map(|p| {
                if p.contains(" OR ") {
                    format!("({p})")
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(" AND "),
    }
}

/// SPDX element ids: `SPDXRef-<kind>-<name>` with the allowed characters, made unique.
#[derive(Default)]
struct Ids(BTreeSet<String>);

impl Ids {
    fn make(&mut self, kind: &str, name: &str) -> String {
        let base = format!("SPDXRef-{kind}-{}", idstring(name));
        let mut id = base.clone();
        let mut n = 2;
        while self.0.contains(&id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        self.0.insert(id.clone());
        id
    }
}

/// ISO 8601 UTC of seconds since the epoch.
pub fn iso8601(t: u64) -> String {
    let c = crate::civil::from_epoch(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn file_blob(tree: &Tree, path: &str) -> Option<(Vec<u8>, Blob)> {
    let real = tree.resolve(path.as_bytes(), true).ok()?;
    match &tree.get(&real)?.kind {
        Kind::File(b) => Some((real, b.clone())),
        _ => None,
    }
}

/// `debian-12` from os-release `ID` and `VERSION_ID`.
fn distro(os_release: &str) -> Option<String> {
    let field = |k: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    Some(format!("{}-{}", field("ID")?, field("VERSION_ID")?))
}

/// What one pass over the tree's files gave.
enum Got {
    Text(String),
    Sha(String),
    Images(String, Vec<airgap::ArchivedImage>),
}

/// Hashes what passes through it.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    hash: Sha256,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Builds the SBOM of the composed root `tree`.
pub fn build(tree: &Tree, inp: &Inputs) -> Result<Sbom, SbomError> {
    let mut notes = Vec::new();
    // Everything read from the tree, in one pass over the base archive.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum What {
        Status,
        OsRelease,
        Copyright(usize),
        Rke2,
        Tarball(usize),
    }
    let status = file_blob(tree, DPKG_STATUS);
    let mut wanted: Vec<(What, Blob)> = Vec::new();
    match &status {
        Some((real, b)) => {
            crate::limits::check(real, b.len())?;
            wanted.push((What::Status, b.clone()));
        }
        None => notes.push(format!(
            "sbom: /{DPKG_STATUS} is not in the root (no dpkg database); the SBOM lists no Debian packages"
        )),
    }
    if let Some((real, b)) = file_blob(tree, "etc/os-release") {
        crate::limits::check(&real, b.len())?;
        wanted.push((What::OsRelease, b));
    }
    if inp.rke2.is_some() {
        if let Some((_, b)) = file_blob(tree, "usr/bin/rke2") {
            wanted.push((What::Rke2, b));
        }
    }
    // Every copyright file, read in the same pass as the status file (one pass over the base
    // archive); packages are matched to them by resolved path below.
    let mut by_real: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (p, id) in tree.iter() {
        let is_copyright = p
            .strip_prefix(b"usr/share/doc/".as_slice())
            .and_then(|r| r.strip_suffix(b"/copyright".as_slice()))
            .is_some_and(|d| !d.is_empty() && !d.contains(&b'/'));
        if let (true, Kind::File(b)) = (is_copyright, &tree.inode(id).kind) {
            if b.len() <= COPYRIGHT_LIMIT {
                let i = by_real.len();
                by_real.insert(p.to_vec(), i);
                wanted.push((What::Copyright(i), b.clone()));
            }
        }
    }
    let mut tarballs: Vec<String> = Vec::new();
    let prefix = format!("{AIRGAP_IMAGES}/");
    for (p, id) in tree.iter() {
        let p = String::from_utf8_lossy(p);
        if let (Some(name), Kind::File(b)) = (p.strip_prefix(&prefix), &tree.inode(id).kind) {
            if !name.contains('/') {
                wanted.push((What::Tarball(tarballs.len()), b.clone()));
                tarballs.push(name.to_string());
            }
        }
    }
    let mut got: BTreeMap<What, Got> = BTreeMap::new();
    let refs: Vec<(What, &Blob)> = wanted.iter().map(|(w, b)| (*w, b)).collect();
    Tree::read_blobs(&refs, &mut |w, r| {
        let v = match w {
            What::Rke2 => {
                let mut h = Sha256::new();
                io::copy(r, &mut h)?;
                Got::Sha(hex::encode(h.finalize()))
            }
            What::Tarball(i) => {
                let name = &tarballs[i];
                let mut tee = Tee {
                    inner: r,
                    hash: Sha256::new(),
                };
                let path = std::path::PathBuf::from(format!("/{prefix}{name}"));
                let images = airgap::read_docker_archive(name, &path, &mut tee)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                Got::Images(hex::encode(tee.hash.finalize()), images)
            }
            _ => {
                let mut v = Vec::new();
                r.read_to_end(&mut v)?;
                Got::Text(String::from_utf8_lossy(&v).into_owned())
            }
        };
        got.insert(w, v);
        Ok(())
    })?;

    let text = |got: &BTreeMap<What, Got>, k: What| match got.get(&k) {
        Some(Got::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let debs = text(&got, What::Status)
        .map(|t| parse_status(&t))
        .unwrap_or_default();
    if status.is_some() && debs.is_empty() {
        notes.push(format!("sbom: /{DPKG_STATUS} lists no installed package"));
    }
    let distro = text(&got, What::OsRelease).and_then(|t| distro(&t));
    let copyright_of: Vec<Option<usize>> = debs
        .iter()
        .map(|d| {
            let p = format!("usr/share/doc/{}/copyright", d.name);
            let real = tree.resolve(p.as_bytes(), true).ok()?;
            by_real.get(&real).copied()
        })
        .collect();
    let with_copyright = copyright_of.iter().filter(|c| c.is_some()).count();
    if !debs.is_empty() && with_copyright == 0 {
        notes.push(
            "sbom: the root keeps no /usr/share/doc/*/copyright files; licenses are NOASSERTION"
                .into(),
        );
    }

    let mut ids = Ids::default();
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut packages: Vec<Value> = Vec::new();
    let mut rels: Vec<(String, &str, String)> = Vec::new();
    let root = ids.make("Image", inp.name);
    packages.push(json!({
        "SPDXID": root,
        "name": inp.name,
        "versionInfo": inp.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    }));
    rels.push(("SPDXRef-DOCUMENT".into(), "DESCRIBES", root.clone()));
    let mut machine_readable = 0;
    for (d, c) in debs.iter().zip(&copyright_of) {
        let lic = match c.and_then(|i| text(&got, What::Copyright(i))) {
            Some(t) => match dep5_licenses(&t) {
                Some(l) => {
                    machine_readable += 1;
                    declared(&l, &mut refs)
                }
                None => "NOASSERTION".into(),
            },
            None => "NOASSERTION".into(),
        };
        let id = ids.make("Deb", &format!("{}-{}", d.name, d.arch));
        packages.push(json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "primaryPackagePurpose": "LIBRARY",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": lic,
            "copyrightText": "NOASSERTION",
            "comment": format!("Debian package, architecture {}", d.arch),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": deb_purl(d, distro.as_deref()),
            }],
        }));
        rels.push((root.clone(), "CONTAINS", id));
    }
    if !debs.is_empty() {
        notes.push(format!(
            "sbom: {} Debian packages, {machine_readable} with a machine-readable copyright file",
            debs.len()
        ));
    }
    let mut rke2_id = None;
    if let Some((version, origin)) = inp.rke2 {
        let id = ids.make("Rke2", version);
        let mut p = json!({
            "SPDXID": id,
            "name": "rke2",
            "versionInfo": version,
            "primaryPackagePurpose": "APPLICATION",
            "downloadLocation": if origin.starts_with("https://") { origin } else { "NOASSERTION" },
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("release origin: {origin}"),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:github/rancher/rke2@{}", purl_encode(version)),
            }],
        });
        if let Some(Got::Sha(sha)) = got.get(&What::Rke2) {
            p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
            p["comment"] = json!("checksum: the supervisor binary /usr/bin/rke2");
        }
        packages.push(p);
        rels.push((root.clone(), "CONTAINS", id.clone()));
        rke2_id = Some(id);
    }
    let mut image_count = 0;
    for (i, name) in tarballs.iter().enumerate() {
        let Some(Got::Images(sha, images)) = got.get(&What::Tarball(i)) else {
            continue;
        };
        let tid = ids.make("Airgap", name);
        packages.push(json!({
            "SPDXID": tid,
            "name": name,
            "primaryPackagePurpose": "ARCHIVE",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "checksums": [{"algorithm": "SHA256", "checksumValue": sha}],
            "comment": format!("/{AIRGAP_IMAGES}/{name}: docker save archive preloaded for rke2"),
        }));
        rels.push((
            rke2_id.clone().unwrap_or_else(|| root.clone()),
            "CONTAINS",
            tid.clone(),
        ));
        let mut entries: Vec<(String, Option<String>)> = Vec::new();
        for img in images {
            let hex = img
                .config
                .trim_start_matches("blobs/sha256/")
                .trim_end_matches(".json")
                .to_ascii_lowercase();
            let digest =
                (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex);
            let tags = img.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                entries.push((
                    digest
                        .as_ref()
                        .map(|d| format!("sha256:{d}"))
                        .unwrap_or_default(),
                    digest,
                ));
            } else {
                entries.extend(tags.into_iter().map(|t| (t, digest.clone())));
            }
        }
        entries.sort();
        entries.dedup();
        for (reference, digest) in entries {
            if reference.is_empty() {
                continue;
            }
            image_count += 1;
            let id = ids.make("Image", &reference);
            let version = reference
                .rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map(|(_, t)| t.to_string());
            let mut p = json!({
                "SPDXID": id,
                "name": reference,
                "primaryPackagePurpose": "CONTAINER",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": docker_purl(&reference),
                }],
            });
            if let Some(v) = version {
                p["versionInfo"] = json!(v);
            }
            if let Some(d) = digest {
                p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": d}]);
                p["comment"] = json!(format!(
                    "image id (config blob digest) sha256:{d}, from {name}'s manifest.json"
                ));
            }
            packages.push(p);
            rels.push((tid.clone(), "CONTAINS", id));
        }
    }
    for (kind, name) in [("init", "rke2-init"), ("node-agent", "rke2-firstboot")] {
        if let Some(i) = inp.inputs.iter().find(|i| i.kind == kind) {
            let id = ids.make("Program", name);
            packages.push(json!({
                "SPDXID": id,
                "name": name,
                "versionInfo": env!("CARGO_PKG_VERSION"),
                "primaryPackagePurpose": "APPLICATION",
                "supplier": "Organization: rke2-image",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "checksums": [{"algorithm": "SHA256", "checksumValue": i.sha256}],
                "comment": format!("{} bytes", i.size),
            }));
            rels.push((root.clone(), "CONTAINS", id));
        }
    }

    let extracted: Vec<Value> = refs
        .iter()
        .map(|(id, name)| {
            json!({
                "licenseId": id,
                "name": name,
                "extractedText": format!(
                    "The license Debian machine-readable copyright files name \"{name}\"; each package's text is in its /usr/share/doc/<package>/copyright."
                ),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", inp.name, inp.version),
        "documentNamespace": "",
        "creationInfo": {
            "created": iso8601(inp.epoch),
            "creators": [format!("Tool: rke2-image-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": rels.iter().map(|(a, r, b)| json!({
            "spdxElementId": a,
            "relationshipType": r,
            "relatedSpdxElement": b,
        })).collect::<Vec<_>>(),
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = json!(extracted);
    }
    // The namespace names this exact content: the sha256 of the document without it.
    let content = serde_json::to_vec(&doc)?;
    doc["documentNamespace"] = json!(format!(
        "https://rke2-image.io/spdx/{}-{}-{}",
        inp.name,
        inp.version,
        hex::encode(Sha256::digest(&content))
    ));
    let mut json = serde_json::to_vec_pretty(&doc)?;
    json.push(b'\n');
    Ok(Sbom {
        json,
        debs: debs.len(),
        images: image_count,
        notes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn purl_encoding_follows_the_spec() {
        // purl-spec: the version is percent-encoded; `+` and `:` are not left bare.
        assert_eq!(purl_encode("1:2.38.1-5+deb12u2"), "1%3A2.38.1-5%2Bdeb12u2");
        assert_eq!(purl_encode("2.36-9~bpo"), "2.36-9~bpo");
        assert_eq!(purl_encode("a b/c"), "a%20b%2Fc");
        let d = Deb {
            name: "libstdc++6".into(),
            version: "12.2.0-14".into(),
            arch: "amd64".into(),
        };
        assert_eq!(
            deb_purl(&d, Some("debian-12")),
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            docker_purl("rancher/mirrored-pause:3.6"),
            "pkg:docker/rancher/mirrored-pause@3.6?repository_url=docker.io"
        );
        assert_eq!(
            docker_purl("registry.k8s.io:5000/a/b:v1"),
            "pkg:docker/a/b@v1?repository_url=registry.k8s.io%3A5000"
        );
    }

    #[test]
    fn status_keeps_installed_packages_only() {
        let s = "Package: a\nStatus: install ok installed\nVersion: 1:1.0+b1\nArchitecture: amd64\nDescription: x\n more\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: all\n\nPackage: c\nStatus: install ok installed\nArchitecture: all\nVersion: 3\n";
        assert_eq!(
            parse_status(s),
            vec![
                Deb {
                    name: "a".into(),
                    version: "1:1.0+b1".into(),
                    arch: "amd64".into()
                },
                Deb {
                    name: "c".into(),
                    version: "3".into(),
                    arch: "all".into()
                }
            ]
        );
    }

    /// Debian bookworm's /usr/share/doc/libseccomp2/copyright (libseccomp 2.5.4-1+deb12u1),
    /// taken from the base tarball, License paragraph shortened.
    const LIBSECCOMP2: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: libseccomp
Source: https://sourceforge.net/projects/libseccomp/

Files: *
Copyright: 2012 Paul Moore <pmoore@redhat.com>
 2012 Ashley Lai <adlai@us.ibm.com>
 2012 Corey Bryant <coreyb@linux.vnet.ibm.com>
 2012 Eduardo Otubo <otubo@linux.vnet.ibm.com>
 2012 Eric Paris <eparis@redhat.com>
License: LGPL-2.1

Files: tests/22-sim-basic_chains_array.tests
Copyright: 2013 Vitaly Shukela <vi0oss@gmail.com>
License: LGPL-2.1

Files: src/hash.*
Copyright: 2006 Bob Jenkins <bob_jenkins@burtleburtle.net>
License: LGPL-2.1

Files: debian/*
Copyright: 2012 Kees Cook <kees@debian.org>
License: LGPL-2.1

License: LGPL-2.1
 This library is free software; you can redistribute it and/or modify it
 under the terms of version 2.1 of the GNU Lesser General Public License as
 published by the Free Software Foundation.
";

    /// Debian bookworm's /usr/share/doc/libcap2/copyright (libcap2 1:2.66-4), first paragraphs.
    const LIBCAP2: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: libcap
Upstream-Contact: Andrew G. Morgan <morgan@kernel.org>
Source: https://www.kernel.org/pub/linux/libs/security/linux-privs/libcap2/

Files: *
Copyright: 1997-2016 Andrew G. Morgan <morgan@linux.kernel.org>
License: BSD-3-clause or GPL-2

Files: debian/*
Copyright: 2014, Daniel Baumann <mail@daniel-baumann.ch>
           2014-2022, Christian Kastner <ckk@debian.org>
License: BSD-3-clause or GPL-2+

License: BSD-3-clause
 Redistribution and use in source and binary forms of libcap, with
 or without modification, are permitted provided that the following
";

    #[test]
    fn dep5_files_licenses_to_spdx() {
        let mut refs = BTreeMap::new();
        let l = dep5_licenses(LIBSECCOMP2).unwrap();
        assert_eq!(l, vec!["LGPL-2.1"]);
        assert_eq!(declared(&l, &mut refs), "LGPL-2.1-only");
        let l = dep5_licenses(LIBCAP2).unwrap();
        assert_eq!(l, vec!["BSD-3-clause or GPL-2", "BSD-3-clause or GPL-2+"]);
        assert_eq!(
            declared(&l, &mut refs),
            "(BSD-3-Clause OR GPL-2.0-only) AND (BSD-3-Clause OR GPL-2.0-or-later)"
        );
        assert!(refs.is_empty());
        // Not machine-readable: no Format header.
        assert_eq!(
            dep5_licenses("This is Debian's prepackaged version of tzdata.\n"),
            None
        );
        // Unknown names become LicenseRefs; known exceptions stay SPDX.
        assert_eq!(
            to_spdx("GPL-2 with Linux-syscall-note exception", &mut refs),
            "GPL-2.0-only WITH Linux-syscall-note"
        );
        assert_eq!(
            to_spdx("GPL-1+ or Artistic", &mut refs),
            "GPL-1.0-or-later OR LicenseRef-Artistic"
        );
        assert_eq!(
            to_spdx("GPL-2+ with Autoconf exception", &mut refs),
            "LicenseRef-GPL-2--with-Autoconf-exception"
        );
        assert_eq!(refs["LicenseRef-Artistic"], "Artistic");
    }

    #[test]
    fn iso8601_of_the_epoch() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
