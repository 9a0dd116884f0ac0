//! `sha256sum-amd64.txt` and verification of release files while they are streamed: each file
//! is hashed in the same pass that decodes it, and its content is used only once the whole file
//! matched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PayloadError;

pub const SUMS_FILE: &str = "sha256sum-amd64.txt";

#[derive(Debug, Clone)]
pub struct Checksums {
    pub dir: PathBuf,
    pub file: PathBuf,
    sums: BTreeMap<String, String>,
}

/// A file that matched its listed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl Checksums {
    pub fn load(dir: &Path) -> Result<Checksums, PayloadError> {
        let file = dir.join(SUMS_FILE);
        // Opened without blocking and bounded: a FIFO or /dev/zero named like the list must
        // not hang the build or exhaust memory.
        let bad = |message: String| PayloadError::Checksums {
            file: file.clone(),
            message,
        };
        let bytes = crate::limits::read_host_file(&file, crate::limits::HOST_TEXT, "checksum list")
            .map_err(bad)?;
        let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text".into()))?;
        Checksums::parse(dir, &file, &text)
    }

    pub fn parse(dir: &Path, file: &Path, text: &str) -> Result<Checksums, PayloadError> {
        let mut sums = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |m: &str| PayloadError::Checksums {
                file: file.to_path_buf(),
                message: format!("line {}: {m}", i + 1),
            };
            let (hash, name) = line
                .split_once(' ')
                .ok_or_else(|| bad("expected `<sha256>  <file name>`"))?;
            // sha256sum marks binary mode with `*`.
            let name = name.trim_start_matches(' ').trim_start_matches('*');
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("not a sha256 hash"));
            }
            if name.is_empty() || name.contains('/') {
                return Err(bad(
                    "file name must be a plain name in the release directory",
                ));
            }
            if sums
                .insert(name.to_string(), hash.to_ascii_lowercase())
                .is_some()
            {
                return Err(bad(&format!("{name} listed twice")));
            }
        }
        Ok(Checksums {
            dir: dir.to_path_buf(),
            file: file.to_path_buf(),
            sums,
        })
    }

    /// Every listed file name, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sums.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.sums.contains_key(name)
    }

    pub fn expected(&self, name: &str) -> Result<&str, PayloadError> {
        self.sums
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| PayloadError::NotListed {
                name: name.into(),
                sums: self.file.clone(),
            })
    }

    /// Streams `name` through `f` while hashing it; the rest of the file is read to the end after
    /// `f` returns. A hash mismatch wins over any error `f` reported (a corrupt file explains
    /// a decode error).
    pub fn verify_stream<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut dyn Read) -> Result<T, PayloadError>,
    ) -> Result<(T, Verified), PayloadError> {
        let expected = self.expected(name)?.to_string();
        let path = self.dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PayloadError::Missing { path, expected })
            }
            Err(source) => return Err(PayloadError::Io { path, source }),
        };
        let mut r = HashingReader {
            inner: file,
            hasher: Sha256::new(),
            n: 0,
        };
        let out = f(&mut r);
        let drained = io::copy(&mut r, &mut io::sink());
        let actual = hex::encode(r.hasher.finalize());
        if let Err(source) = drained {
            return Err(PayloadError::Io { path, source });
        }
        if actual != expected {
            return Err(PayloadError::Mismatch {
                path,
                expected,
                actual,
            });
        }
        let v = Verified {
            name: name.into(),
            path,
            sha256: actual,
            size: r.n,
        };
        Ok((out?, v))
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256sum_output() {
        let h = "a".repeat(64);
        let c = Checksums::parse(
            Path::new("."),
            Path::new("s"),
            &format!("{h}  x.tar.gz\n{h} *y.txt\n"),
        )
        .unwrap();
        assert_eq!(c.expected("x.tar.gz").unwrap(), h);
        assert!(c.contains("y.txt"));
        assert!(Checksums::parse(Path::new("."), Path::new("s"), "abc  x\n").is_err());
        assert!(Checksums::parse(Path::new("."), Path::new("s"), &format!("{h}  ../x\n")).is_err());
    }
}
