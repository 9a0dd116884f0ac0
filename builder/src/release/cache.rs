//! The release cache on disk (layout in the [module documentation](super)).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{check_version, url_version, wanted_files, ReleaseError, SUMS_FILE};
use crate::payload::artifacts::Checksums;

const ORIGIN_FILE: &str = "origin.json";

/// Where a cached file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Downloaded from this base URL (credentials removed).
    Url(String),
    /// `release import` of a directory (its path is not recorded).
    Import,
}

impl Origin {
    fn as_str(&self) -> &str {
        match self {
            Origin::Url(u) => u,
            Origin::Import => "import",
        }
    }
    fn parse(s: &str) -> Origin {
        if s == "import" {
            Origin::Import
        } else {
            Origin::Url(s.to_string())
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OriginFile {
    version: String,
    /// File name -> base URL or `import`.
    files: BTreeMap<String, String>,
}

/// A release directory in the cache.
#[derive(Debug, Clone)]
pub struct CachedRelease {
    pub version: String,
    pub dir: PathBuf,
    /// File name -> (sha256, origin), for the files present.
    pub files: BTreeMap<String, (String, Origin)>,
    pub sums: Checksums,
}

impl CachedRelease {
    /// Files `parts` need that are not cached.
    pub fn missing(&self, parts: &[String]) -> Result<Vec<String>, ReleaseError> {
        let want = wanted_files(&self.sums, parts, "the cached release", &self.version)?;
        Ok(want
            .into_iter()
            .filter(|f| !self.files.contains_key(f))
            .collect())
    }

    fn origins(&self) -> Vec<&Origin> {
        let mut o: Vec<&Origin> = self.files.values().map(|(_, o)| o).collect();
        o.sort_by_key(|o| o.as_str().to_string());
        o.dedup();
        o
    }

    /// `https://.../download/v1.31.5%2Brke2r1`, `import`, or both, for people.
    pub fn origin_summary(&self) -> String {
        self.origins()
            .iter()
            .map(|o| match o {
                Origin::Url(u) => {
                    format!("{}/{}", u.trim_end_matches('/'), url_version(&self.version))
                }
                Origin::Import => "import".into(),
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The prefix the manifest puts before each file name: the release URL when every file
    /// was downloaded from one place, `import:<version>` when imported, never a host path.
    pub fn origin_display(&self, version: &str) -> String {
        match self.origins().as_slice() {
            [Origin::Url(u)] => format!("{}/{}", u.trim_end_matches('/'), url_version(version)),
            [Origin::Import] => format!("import:{version}"),
            _ => format!("mixed:{}", self.origin_summary()),
        }
    }

    pub fn size(&self) -> u64 {
        self.files
            .keys()
            .filter_map(|n| fs::metadata(self.dir.join(n)).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The release cache rooted at `<cache>/releases`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `cache_dir` is the tool's cache directory (the one bases go to).
    pub fn new(cache_dir: &Path) -> Cache {
        Cache {
            root: cache_dir.join("releases"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    pub fn partial(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(format!("{sha256}.part"))
    }

    pub(crate) fn ensure_dirs(&self) -> Result<(), ReleaseError> {
        for d in ["blobs/sha256", "partial"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(ReleaseError::io(&p))?;
        }
        Ok(())
    }

    /// Moves a verified partial file to its blob name.
    pub(crate) fn commit_blob(
        &self,
        partial: &Path,
        sha256: &str,
    ) -> Result<PathBuf, ReleaseError> {
        let blob = self.blob(sha256);
        fs::File::open(partial)
            .and_then(|f| f.sync_all())
            .map_err(ReleaseError::io(partial))?;
        fs::rename(partial, &blob).map_err(ReleaseError::io(&blob))?;
        Ok(blob)
    }

    /// Copies `r` into the cache as the blob `expected`, hashing on the way; a mismatch leaves
    /// nothing behind and returns the actual hash as the error.
    pub(crate) fn store_verified(
        &self,
        r: &mut dyn Read,
        expected: &str,
    ) -> Result<Result<u64, String>, ReleaseError> {
        self.ensure_dirs()?;
        if self.blob(expected).is_file() {
            // Content-addressed: the same bytes are already there (still hash what we read,
            // so a bad source file is reported).
            let mut h = Sha256::new();
            let n = io::copy(r, &mut HashWriter(&mut h))
                .map_err(ReleaseError::io(self.blob(expected)))?;
            let actual = hex::encode(h.finalize());
            return Ok(if actual == expected {
                Ok(n)
            } else {
                Err(actual)
            });
        }
        let part = self.partial(expected);
        let mut f = fs::File::create(&part).map_err(ReleaseError::io(&part))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).map_err(ReleaseError::io(&part))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k]).map_err(ReleaseError::io(&part))?;
            n += k as u64;
        }
        drop(f);
        let actual = hex::encode(h.finalize());
        if actual != expected {
            let _ = fs::remove_file(&part);
            return Ok(Err(actual));
        }
        self.commit_blob(&part, expected)?;
        Ok(Ok(n))
    }

    /// The cached release `version`, if any.
    pub fn get(&self, version: &str) -> Result<Option<CachedRelease>, ReleaseError> {
        check_version(version)?;
        let dir = self.root.join(version);
        if !dir.is_dir() {
            return Ok(None);
        }
        let sums = Checksums::load(&dir).map_err(|e| ReleaseError::Corrupt {
            path: dir.clone(),
            message: format!("{e}; remove the directory and pull or import the release again"),
        })?;
        let of = dir.join(ORIGIN_FILE);
        let text = fs::read_to_string(&of).map_err(ReleaseError::io(&of))?;
        let o: OriginFile = serde_json::from_str(&text).map_err(|e| ReleaseError::Corrupt {
            path: of.clone(),
            message: e.to_string(),
        })?;
        let mut files = BTreeMap::new();
        for (name, origin) in o.files {
            let sha = sums.expected(&name).map_err(|e| ReleaseError::Corrupt {
                path: of.clone(),
                message: e.to_string(),
            })?;
            if dir.join(&name).is_file() {
                files.insert(name, (sha.to_string(), Origin::parse(&origin)));
            }
        }
        Ok(Some(CachedRelease {
            version: version.to_string(),
            dir,
            files,
            sums,
        }))
    }

    /// Every cached release, by version name.
    pub fn list(&self) -> Result<Vec<CachedRelease>, ReleaseError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ReleaseError::io(&self.root)(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_version(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(r) = self.get(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Adds `files` (already stored as blobs) to the release `version` described by
    /// `sums_text`: a complete new directory is renamed into place.
    pub(crate) fn register(
        &self,
        version: &str,
        sums_text: &str,
        files: &[(String, Origin)],
    ) -> Result<CachedRelease, ReleaseError> {
        check_version(version)?;
        let dir = self.root.join(version);
        let mut all: BTreeMap<String, Origin> = BTreeMap::new();
        if let Some(old) = self.get(version)? {
            let old_sums = fs::read_to_string(dir.join(SUMS_FILE))
                .map_err(ReleaseError::io(dir.join(SUMS_FILE)))?;
            if old_sums != sums_text {
                return Err(ReleaseError::Corrupt {
                    path: dir.join(SUMS_FILE),
                    message: format!(
                        "the cached {version} has a different {SUMS_FILE} than the one just fetched; remove {} to replace it",
                        dir.display()
                    ),
                });
            }
            all.extend(old.files.into_iter().map(|(n, (_, o))| (n, o)));
        }
        all.extend(files.iter().cloned());
        let sums = Checksums::parse(&dir, &dir.join(SUMS_FILE), sums_text)
            .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
        let tmp = self.root.join(format!(".new-{version}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(ReleaseError::io(&tmp))?;
        let w = |p: PathBuf, data: &[u8]| fs::write(&p, data).map_err(ReleaseError::io(p));
        w(tmp.join(SUMS_FILE), sums_text.as_bytes())?;
        for name in all.keys() {
            let sha = sums
                .expected(name)
                .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
            if !self.blob(sha).is_file() {
                return Err(ReleaseError::Corrupt {
                    path: self.blob(sha),
                    message: format!("{name} is missing from the cache"),
                });
            }
            let link = tmp.join(name);
            std::os::unix::fs::symlink(format!("../blobs/sha256/{sha}"), &link)
                .map_err(ReleaseError::io(&link))?;
        }
        let of = OriginFile {
            version: version.to_string(),
            files: all
                .iter()
                .map(|(n, o)| (n.clone(), o.as_str().to_string()))
                .collect(),
        };
        let json = serde_json::to_string_pretty(&of)
            .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
        w(tmp.join(ORIGIN_FILE), format!("{json}\n").as_bytes())?;
        let old = self.root.join(format!(".old-{version}"));
        let _ = fs::remove_dir_all(&old);
        if dir.exists() {
            fs::rename(&dir, &old).map_err(ReleaseError::io(&dir))?;
        }
        fs::rename(&tmp, &dir).map_err(ReleaseError::io(&dir))?;
        let _ = fs::remove_dir_all(&old);
        self.get(version)?.ok_or_else(|| ReleaseError::Corrupt {
            path: dir,
            message: "release directory vanished".into(),
        })
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
