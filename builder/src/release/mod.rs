//! RKE2 releases in a local cache: `rke2-image release pull` downloads one (verifying every file
//! against the release's `sha256sum-amd64.txt` while it streams), `release import` takes a
//! directory carried into an air-gapped site, `release list` shows the cache, and a definition's
//! `rke2: {version: ...}` without `artifacts:` resolves to the cached release ([`resolve`]).
//!
//! # Cache layout (under `<cache>/releases/`)
//!
//! | path | what |
//! |------|------|
//! | `blobs/sha256/<hex>` | file content, named by its sha256; written only once verified |
//! | `partial/<hex>.part` | an interrupted download of that content, resumed with `Range` |
//! | `<version>/` | the release as a directory: `sha256sum-amd64.txt`, `origin.json`, and one symlink per cached file to its blob |
//!
//! A release directory appears (or grows, when more parts are pulled) by renaming a complete
//! new directory into place, so a failed pull or import never leaves a release that claims
//! files it does not have. Verified blobs of a failed pull stay: the next pull reuses them.

pub mod cache;
pub mod http;
pub mod import;
pub mod pull;

use std::path::PathBuf;

pub use cache::{Cache, CachedRelease, Origin};

use crate::payload::{self, Rke2Spec};

/// Where `release pull` downloads from unless told otherwise.
pub const DEFAULT_BASE_URL: &str = "https://github.com/rancher/rke2/releases/download";
/// The architecture every file name here refers to.
pub const ARCH: &str = "amd64";
pub const BUNDLE: &str = "rke2.linux-amd64.tar.gz";
pub use payload::artifacts::SUMS_FILE;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0:?} is not an RKE2 release version like v1.31.5+rke2r1")]
    BadVersion(String),
    #[error("unknown part {0:?}; parts are {parts}", parts = payload::PARTS.join(", "))]
    BadPart(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("{name}: {url} answered HTTP {status}{hint}")]
    Status {
        name: String,
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{name}: transfer from {url} ended after {got} of {total} bytes ({detail}); the partial download is kept and the next pull resumes it")]
    Truncated {
        name: String,
        url: String,
        got: u64,
        total: String,
        detail: String,
    },
    #[error("{name}: sha256 mismatch for {url}: sha256sum-amd64.txt says {expected}, the download has {actual}; nothing was cached (check the mirror or --url)")]
    Mismatch {
        name: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: sha256 mismatch in {source_dir}: sha256sum-amd64.txt says {expected}, the file has {actual}; nothing was imported (copy the file again)")]
    ImportMismatch {
        name: String,
        source_dir: String,
        expected: String,
        actual: String,
    },
    #[error("{name} is not listed in {origin}'s sha256sum-amd64.txt (is {version} the right release, and does it have that part?)")]
    NotListed {
        name: String,
        origin: String,
        version: String,
    },
    #[error("{0}")]
    Checksums(String),
    #[error("{dir}: cannot tell the release version (no rke2-runtime image in an image list); pass --version")]
    UnknownVersion { dir: String },
    #[error("{dir} has no {BUNDLE}; an imported release needs at least the bundle and sha256sum-amd64.txt")]
    NoBundle { dir: String },
    #[error("RKE2 {version} is not in the release cache ({cache}){missing} and --offline forbids downloading it. On a machine with access to the release location run `rke2-image release pull {version}{parts}` and carry the cache over, or copy the release files (sha256sum-amd64.txt, {BUNDLE}, the image tarballs and .txt lists) into a directory and run `rke2-image release import DIR`")]
    NotCached {
        version: String,
        cache: String,
        missing: String,
        parts: String,
    },
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("RKE2 {version} is not in the release cache and pulling it failed: {cause}. Where the release location cannot be reached, copy the release files into a directory, run `rke2-image release import DIR`, and build with --offline")]
    PullFailed { version: String, cause: String },
}

impl ReleaseError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReleaseError {
        let path = path.into();
        move |source| ReleaseError::Io { path, source }
    }
}

/// Checks a version string before it becomes a URL and a directory name.
pub fn check_version(v: &str) -> Result<(), ReleaseError> {
    let ok = v.starts_with('v')
        && v.contains("+rke2r")
        && v.len() < 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::BadVersion(v.to_string()))
    }
}

/// `VERSION` as it appears in a release URL (`+` written as `%2B`).
pub fn url_version(v: &str) -> String {
    v.replace('+', "%2B")
}

/// The release location of one file.
pub fn file_url(base: &str, version: &str, name: &str) -> String {
    format!(
        "{}/{}/{name}",
        base.trim_end_matches('/'),
        url_version(version)
    )
}

/// Parts pulled when none are named: the core images and the default CNI.
pub const DEFAULT_PARTS: &[&str] = &["core", "canal"];

/// Checks part names (`all` means every part) and returns them without duplicates.
pub fn parse_parts(list: &[String]) -> Result<Vec<String>, ReleaseError> {
    let mut out: Vec<String> = Vec::new();
    for p in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if p.is_empty() {
            continue;
        }
        let add: Vec<&str> = if p == "all" {
            payload::PARTS.to_vec()
        } else if payload::PARTS.contains(&p) {
            vec![p]
        } else {
            return Err(ReleaseError::BadPart(p.to_string()));
        };
        for a in add {
            if !out.iter().any(|o| o == a) {
                out.push(a.to_string());
            }
        }
    }
    Ok(out)
}

/// The image list and the tarball candidates (preferred first) of a part.
pub fn part_files(part: &str) -> (String, [String; 2]) {
    let stem = payload::airgap::stem(part);
    (
        format!("{stem}.linux-{ARCH}.txt"),
        [
            format!("{stem}.linux-{ARCH}.tar.zst"),
            format!("{stem}.linux-{ARCH}.tar.gz"),
        ],
    )
}

/// Files needed for `parts`, given the release's checksum list (which tarball format exists).
pub fn wanted_files(
    sums: &payload::artifacts::Checksums,
    parts: &[String],
    origin: &str,
    version: &str,
) -> Result<Vec<String>, ReleaseError> {
    let not_listed = |name: &str| ReleaseError::NotListed {
        name: name.to_string(),
        origin: origin.to_string(),
        version: version.to_string(),
    };
    let mut out = vec![BUNDLE.to_string()];
    if !sums.contains(BUNDLE) {
        return Err(not_listed(BUNDLE));
    }
    for p in parts {
        let (list, tars) = part_files(p);
        if !sums.contains(&list) {
            return Err(not_listed(&list));
        }
        let tar = tars
            .iter()
            .find(|t| sums.contains(t))
            .ok_or_else(|| not_listed(&tars[0]))?;
        out.push(tar.clone());
        out.push(list);
    }
    Ok(out)
}

/// How [`resolve`] may get a release that is not cached.
#[derive(Debug)]
pub enum Fetch<'a> {
    /// Missing releases are an error naming how to import one.
    Offline,
    /// Missing releases (or parts) are pulled.
    Pull(&'a pull::PullOptions),
}

/// Points a `rke2: {version: ...}` section without `artifacts:` at the cached release,
/// pulling it (or the missing parts) first unless offline. Sections with `artifacts:` are
/// left alone. Returns the release used, if any.
pub fn resolve(
    spec: &mut Rke2Spec,
    cache: &Cache,
    fetch: Fetch<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Option<CachedRelease>, ReleaseError> {
    if !spec.from_release_cache {
        return Ok(None);
    }
    let parts: Vec<String> = spec
        .images
        .iter()
        .filter(|p| *p != payload::LEGACY)
        .cloned()
        .collect();
    // The legacy tarball is not a part `release pull` knows; it needs a directory.
    if spec.images.iter().any(|p| p == payload::LEGACY) {
        return Err(ReleaseError::BadPart(format!(
            "{} (the combined tarball: use `images: [core, canal]` with a cached release, or `artifacts:` for a directory)",
            payload::LEGACY
        )));
    }
    let have = cache.get(&spec.version)?;
    let missing = match &have {
        None => None,
        Some(r) => {
            let m = r.missing(&parts)?;
            if m.is_empty() {
                spec.artifacts = r.dir.clone();
                spec.origin = r.origin_display(&spec.version);
                log(&format!(
                    "rke2: using cached release {} ({})",
                    spec.version,
                    r.origin_summary()
                ));
                return Ok(have);
            }
            Some(m)
        }
    };
    match fetch {
        Fetch::Offline => Err(ReleaseError::NotCached {
            version: spec.version.clone(),
            cache: cache.root().display().to_string(),
            missing: match missing {
                Some(m) => format!(
                    " with all the files this image needs (missing: {})",
                    m.join(", ")
                ),
                None => String::new(),
            },
            parts: format!(" --parts {}", parts.join(",")),
        }),
        Fetch::Pull(opts) => {
            let mut o = opts.clone();
            o.parts = parts;
            let r = pull::pull(cache, &spec.version, &o, &mut |e| {
                if !e.is_progress() {
                    log(&e.to_string())
                }
            })
            .map_err(|e| ReleaseError::PullFailed {
                version: spec.version.clone(),
                cause: e.to_string(),
            })?;
            spec.artifacts = r.dir.clone();
            spec.origin = r.origin_display(&spec.version);
            Ok(Some(r))
        }
    }
}

/// Parts in the order `release list` shows them.
pub const PARTS_FOR_LIST: &[&str] = payload::PARTS;
