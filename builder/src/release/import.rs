//! `release import DIR`: a release directory carried into an air-gapped site goes into the
//! cache with the same verification as a pull. Every file of the directory that
//! `sha256sum-amd64.txt` lists is taken (a carried directory often holds only some parts).

use std::fs;
use std::path::Path;

use crate::payload::Rke2Spec;

use super::{check_version, Cache, CachedRelease, Origin, ReleaseError, BUNDLE, SUMS_FILE};
use crate::payload::artifacts::Checksums;

/// The version named by the `rke2-runtime` image in the directory's image lists
/// (`docker.io/rancher/rke2-runtime:v1.31.5-rke2r1` is release `v1.31.5+rke2r1`).
pub fn detect_version(dir: &Path, sums: &Checksums) -> Option<String> {
    let mut lists: Vec<String> = sums
        .names()
        .filter(|n| n.ends_with(".txt"))
        .map(str::to_string)
        .collect();
    lists.sort();
    for l in lists {
        let Ok(text) = fs::read_to_string(dir.join(&l)) else {
            continue;
        };
        for line in text.lines() {
            if let Some((_, tag)) = line.trim().split_once("/rke2-runtime:") {
                if let Some((k8s, rev)) = tag.rsplit_once("-rke2r") {
                    let v = format!("{k8s}+rke2r{rev}");
                    if check_version(&v).is_ok() {
                        return Some(v);
                    }
                }
            }
        }
    }
    None
}

/// Imports `dir`; `version` overrides the detected one.
pub fn import(
    cache: &Cache,
    dir: &Path,
    version: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<CachedRelease, ReleaseError> {
    let shown = dir.display().to_string();
    let sums_path = dir.join(SUMS_FILE);
    let sums_text = fs::read_to_string(&sums_path).map_err(ReleaseError::io(&sums_path))?;
    let sums = Checksums::parse(dir, &sums_path, &sums_text)
        .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
    if !dir.join(BUNDLE).is_file() {
        return Err(ReleaseError::NoBundle { dir: shown });
    }
    let version = match version {
        Some(v) => v.to_string(),
        None => {
            detect_version(dir, &sums).ok_or(ReleaseError::UnknownVersion { dir: shown.clone() })?
        }
    };
    check_version(&version)?;
    let mut names: Vec<String> = sums
        .names()
        .filter(|n| dir.join(n).is_file())
        .map(str::to_string)
        .collect();
    names.sort();
    let mut got = Vec::new();
    for name in names {
        let expected = sums
            .expected(&name)
            .map_err(|e| ReleaseError::Checksums(e.to_string()))?
            .to_string();
        let path = dir.join(&name);
        let mut f = fs::File::open(&path).map_err(ReleaseError::io(&path))?;
        match cache.store_verified(&mut f, &expected)? {
            Ok(n) => log(&format!("{name}: {n} bytes, sha256 verified")),
            Err(actual) => {
                return Err(ReleaseError::ImportMismatch {
                    name,
                    source_dir: shown,
                    expected,
                    actual,
                })
            }
        }
        got.push((name, Origin::Import));
    }
    cache.register(&version, &sums_text, &got)
}

/// Points `spec` at the release directory `dir` as it is (no cache), taking the version from
/// its image lists. The manifest records `dir:<version>`, not the path.
pub fn use_directory(spec: &mut Rke2Spec, dir: &Path) -> Result<String, ReleaseError> {
    let shown = dir.display().to_string();
    let sums_path = dir.join(SUMS_FILE);
    let sums_text = fs::read_to_string(&sums_path).map_err(ReleaseError::io(&sums_path))?;
    let sums = Checksums::parse(dir, &sums_path, &sums_text)
        .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
    let version = detect_version(dir, &sums).ok_or(ReleaseError::UnknownVersion { dir: shown })?;
    spec.artifacts = fs::canonicalize(dir).map_err(ReleaseError::io(dir))?;
    spec.origin = format!("dir:{version}");
    spec.version = version.clone();
    spec.from_release_cache = false;
    Ok(version)
}
