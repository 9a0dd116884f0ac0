//! Putting a build's outputs into the output directory without ever showing a half-written or
//! mismatched pair under the final names.
//!
//! - A `flock`ed `.<stem>.lock` is held for the whole build: a second build of the same output
//!   is refused instead of racing the first.
//! - With the lock held, temporaries a killed build left for this output are removed (they
//!   are multi-GB and nothing else would reclaim them).
//! - Temporaries are created `O_CREAT|O_EXCL|O_NOFOLLOW`: a symlink or file planted under the
//!   temporary name makes the build fail instead of writing through it.
//! - Publish order: fsync the image → remove the old manifest → rename the image into place
//!   → write the manifest atomically. A manifest under the final name therefore always
//!   describes the image beside it; a failure in between leaves an image without a manifest,
//!   never a manifest with another build's image.
//! - Companions (the SBOM, `<stem>.spdx.json`) follow the manifest's rule: removed before the
//!   image is renamed, written atomically after it, so one never describes another image.
//! - Staged files (other outputs written by a program, like `<stem>.qcow2`) are created under
//!   `.<stem>.<suffix>.partial-<pid>`, renamed right after the image and removed on failure.
//! - When the raw image is not a selected output ([`Outputs::keep_image`] false) it is still
//!   the build's working file, but it is removed at publish instead of renamed, and an old
//!   `<stem>.raw` goes with the old manifest (it would not match the new one).
//! - Companion directories (the PXE files, `<stem>.pxe/`) are filled under a temporary name
//!   `.<stem>.<suffix>.partial-<pid>`, the old directory is removed with the old manifest, and
//!   the new one is renamed into place after the image; a failed build removes the temporary.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::limits::io_reason;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("output directory {dir}: {reason}")]
    Dir { dir: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("another build of {stem} is writing to {dir} (it holds {lock}); wait for it or choose another output directory")]
    Busy {
        stem: String,
        dir: PathBuf,
        lock: PathBuf,
    },
}

fn file_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |e| PublishError::File {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    }
}

/// Creates `path` exclusively, never through a symlink.
pub(crate) fn create_exclusive(path: &Path, read: bool) -> io::Result<File> {
    File::options()
        .read(read)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// One build's outputs `<stem>.raw` and `<stem>.manifest.json` in `dir`, from the moment the
/// build starts writing until they are published.
#[derive(Debug)]
pub struct Outputs {
    dir: PathBuf,
    stem: String,
    image: PathBuf,
    manifest: PathBuf,
    signature: PathBuf,
    temp: PathBuf,
    /// Files published beside the image (final path, bytes), after it and before the manifest.
    companions: Vec<(PathBuf, Vec<u8>)>,
    /// Files written in place under a temporary name (temporary, final path).
    staged: Vec<(PathBuf, PathBuf)>,
    /// Whether the image itself is published (`raw` selected).
    keep_image: bool,
    /// Directories published beside the image: (final path, temporary path being filled).
    dirs: Vec<(PathBuf, PathBuf)>,
    file: Option<File>,
    published: bool,
    /// Held (and the `flock` with it) until the outputs are dropped.
    _lock: File,
}

impl Outputs {
    /// Takes the output lock, removes this output's stale temporaries and creates the image
    /// temporary. Refuses final names that are not regular files (a directory called
    /// `<stem>.raw` would fail the rename only after the whole build).
    pub fn begin(dir: &Path, stem: &str) -> Result<Outputs, PublishError> {
        let dir_err = |reason: String| PublishError::Dir {
            dir: dir.to_path_buf(),
            reason,
        };
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(dir_err("exists and is not a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
                .map_err(|e| dir_err(format!("cannot create it: {}", io_reason(&e))))?,
            Err(e) => return Err(dir_err(io_reason(&e))),
        }
        let image = dir.join(format!("{stem}.raw"));
        let manifest = dir.join(format!("{stem}.manifest.json"));
        let signature = dir.join(format!("{stem}.manifest.json.sig"));
        for p in [&image, &manifest, &signature] {
            refuse_non_file(p)?;
        }
        let lock_path = dir.join(format!(".{stem}.lock"));
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(file_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(PublishError::Busy {
                    stem: stem.to_string(),
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                });
            }
            return Err(file_err(&lock_path)(e));
        }
        remove_stale(dir, stem).map_err(|e| dir_err(io_reason(&e)))?;
        let temp = dir.join(format!(".{stem}.raw.partial-{}", std::process::id()));
        let file = create_exclusive(&temp, true).map_err(file_err(&temp))?;
        Ok(Outputs {
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
            image,
            manifest,
            signature,
            temp,
            companions: Vec::new(),
            staged: Vec::new(),
            keep_image: true,
            dirs: Vec::new(),
            file: Some(file),
            published: false,
            _lock: lock,
        })
    }

    /// The image temporary, to write the disk into.
    pub fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("the image file lives until publish")
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Final path of the image.
    pub fn image_path(&self) -> &Path {
        &self.image
    }

    /// Final path of the output `<stem>.<suffix>` beside the image.
    pub fn final_path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }

    /// Final path of the manifest.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest
    }

    /// Stages `data` to be published as `<stem>.<suffix>` beside the image; returns its final
    /// path. Refused when that name exists and is not a regular file.
    pub fn add_companion(&mut self, suffix: &str, data: Vec<u8>) -> Result<PathBuf, PublishError> {
        let path = self.dir.join(format!("{}.{suffix}", self.stem));
        refuse_non_file(&path)?;
        self.companions.push((path.clone(), data));
        Ok(path)
    }

    /// Publish the image under its final name (`true`, the default), or only use it as the
    /// build's working file and remove it at publish (`raw` not among the selected outputs).
    pub fn keep_image(&mut self, keep: bool) {
        self.keep_image = keep;
    }

    /// Whether the image is published.
    pub fn image_kept(&self) -> bool {
        self.keep_image
    }

    /// Creates the temporary for an output published as `<stem>.<suffix>` that a program
    /// writes in place; returns (temporary, final path). The temporary exists (empty,
    /// created exclusively) and is renamed at publish, removed on failure.
    pub fn stage_file(&mut self, suffix: &str) -> Result<(PathBuf, PathBuf), PublishError> {
        let path = self.dir.join(format!("{}.{suffix}", self.stem));
        refuse_non_file(&path)?;
        let temp = self.dir.join(format!(
            ".{}.{suffix}.partial-{}",
            self.stem,
            std::process::id()
        ));
        create_exclusive(&temp, false).map_err(file_err(&temp))?;
        self.staged.push((temp.clone(), path.clone()));
        Ok((temp, path))
    }

    /// Creates the temporary directory that becomes `<stem>.<suffix>/` beside the image and
    /// returns its path, for the emitter to fill. Refused when that name exists and is not a
    /// directory (a file or symlink there is not the build's to replace).
    pub fn add_dir(&mut self, suffix: &str) -> Result<PathBuf, PublishError> {
        let path = self.dir.join(format!("{}.{suffix}", self.stem));
        if let Ok(m) = fs::symlink_metadata(&path) {
            if !m.is_dir() {
                return Err(PublishError::File {
                    path,
                    reason: "exists and is not a directory; move it away (the build replaces only a directory there)".into(),
                });
            }
        }
        let temp = self.dir.join(format!(
            ".{}.{suffix}.partial-{}",
            self.stem,
            std::process::id()
        ));
        fs::create_dir(&temp).map_err(file_err(&temp))?;
        self.dirs.push((path, temp.clone()));
        Ok(temp)
    }

    /// Name (`<stem>.<suffix>/<file>`), size and sha256 of each file in the staged
    /// directories, sorted by name, for the published manifest.
    pub fn dir_records(&self) -> Result<Vec<rke2_image_contract::manifest::EspFile>, PublishError> {
        use sha2::{Digest, Sha256};
        let mut out = Vec::new();
        for (path, temp) in &self.dirs {
            let dir_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut names: Vec<String> = fs::read_dir(temp)
                .map_err(file_err(temp))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<_>>()
                .map_err(file_err(temp))?;
            names.sort();
            for n in names {
                let p = temp.join(&n);
                let mut f = File::open(&p).map_err(file_err(&p))?;
                let mut h = Sha256::new();
                let size = io::copy(&mut f, &mut h).map_err(file_err(&p))?;
                out.push(rke2_image_contract::manifest::EspFile {
                    path: format!("{dir_name}/{n}"),
                    size,
                    sha256: hex::encode(h.finalize()),
                });
            }
        }
        Ok(out)
    }

    /// Name, size and sha256 of each companion and staged file, for the published manifest.
    pub fn companion_records(
        &self,
    ) -> Result<Vec<rke2_image_contract::manifest::EspFile>, PublishError> {
        use sha2::{Digest, Sha256};
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for (temp, path) in &self.staged {
            let mut h = Sha256::new();
            let size = File::open(temp)
                .and_then(|mut f| io::copy(&mut f, &mut h))
                .map_err(file_err(temp))?;
            out.push(rke2_image_contract::manifest::EspFile {
                path: name(path),
                size,
                sha256: hex::encode(h.finalize()),
            });
        }
        out.extend(self.companions.iter().map(|(p, data)| {
            rke2_image_contract::manifest::EspFile {
                path: name(p),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            }
        }));
        Ok(out)
    }

    /// Publishes the image, its companions and then `manifest` (see the module docs for the
    /// order).
    pub fn publish(self, manifest: &[u8]) -> Result<(), PublishError> {
        self.publish_signed(manifest, None)
    }

    /// [`Outputs::publish`], then the manifest's detached signature `<stem>.manifest.json.sig`
    /// when there is one. An old signature and old companions go with the old manifest, before
    /// the rename.
    pub fn publish_signed(
        mut self,
        manifest: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), PublishError> {
        let file = self.file.take().expect("publish runs once");
        file.sync_all().map_err(file_err(&self.temp))?;
        drop(file);
        let mut removed = false;
        let old = [&self.signature, &self.manifest]
            .into_iter()
            .chain(self.companions.iter().map(|c| &c.0))
            .chain(self.staged.iter().map(|s| &s.1))
            .chain((!self.keep_image).then_some(&self.image));
        for p in old {
            match fs::remove_file(p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_err(p)(e)),
            }
        }
        for (p, _) in &self.dirs {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    fs::remove_dir_all(p).map_err(file_err(p))?;
                    removed = true;
                }
                _ => {}
            }
        }
        if removed {
            sync_dir(&self.dir);
        }
        if self.keep_image {
            fs::rename(&self.temp, &self.image).map_err(file_err(&self.image))?;
        } else {
            fs::remove_file(&self.temp).map_err(file_err(&self.temp))?;
        }
        self.published = true;
        for (temp, path) in &self.staged {
            fs::rename(temp, path).map_err(file_err(path))?;
        }
        sync_dir(&self.dir);
        for (p, temp) in std::mem::take(&mut self.dirs) {
            sync_dir(&temp);
            if let Err(e) = fs::rename(&temp, &p) {
                let _ = fs::remove_dir_all(&temp);
                return Err(file_err(&p)(e));
            }
        }
        for (p, data) in &self.companions {
            write_atomic(p, data).map_err(file_err(p))?;
        }
        write_atomic(&self.manifest, manifest).map_err(file_err(&self.manifest))?;
        if let Some(sig) = signature {
            write_atomic(&self.signature, sig).map_err(file_err(&self.signature))?;
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.temp);
        }
        // Not yet renamed (a failure before or during publish).
        for (temp, _) in &self.staged {
            let _ = fs::remove_file(temp);
        }
        for (_, temp) in &self.dirs {
            let _ = fs::remove_dir_all(temp);
        }
    }
}

/// Refuses a final name that exists and is not a regular file (a directory there would fail
/// the rename only after the whole build).
fn refuse_non_file(path: &Path) -> Result<(), PublishError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => Err(PublishError::File {
            path: path.to_path_buf(),
            reason:
                "exists and is not a regular file; move it away (the build replaces only files)"
                    .into(),
        }),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) {
    // Durability only: a failure here cannot be acted on and leaves the names consistent.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The companion directories' suffixes (named here so stale ones are recognised exactly).
pub const DIR_SUFFIXES: &[&str] = &["pxe"];

/// Removes `.<stem>.<suffix>.partial-*` directories, `.<stem>.raw.partial-*`,
/// `.<stem>.qcow2.partial-*`, `.<stem>.manifest.json.tmp-*` and `.<stem>.spdx.json.tmp-*` left
/// by killed builds.
/// Runs with the output lock held, so none of them belongs to a live build. Only regular files
/// and symlinks are removed (never followed).
fn remove_stale(dir: &Path, stem: &str) -> io::Result<()> {
    let prefixes = [
        format!(".{stem}.raw.partial-"),
        format!(".{stem}.qcow2.partial-"),
        format!(".{stem}.manifest.json.tmp-"),
        format!(".{stem}.spdx.json.tmp-"),
        format!(".{stem}.manifest.json.sig.tmp-"),
    ];
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let t = entry.file_type()?;
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            if t.is_file() || t.is_symlink() {
                fs::remove_file(entry.path())?;
            }
        } else if t.is_dir()
            && DIR_SUFFIXES
                .iter()
                .any(|d| name.starts_with(&format!(".{stem}.{d}.partial-")))
        {
            // A companion directory a killed build was filling (never followed: remove_dir_all
            // does not traverse symlinks).
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The directory of `path` and a hidden name in it for this process's `.<name>.<tag>-<pid>`
/// temporary.
pub(crate) fn beside<'a>(path: &'a Path, tag: &str) -> (&'a Path, PathBuf) {
    let dir = dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        dir,
        dir.join(format!(".{name}.{tag}-{}", std::process::id())),
    )
}

/// Exclusive temporary beside `path`, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let (dir, tmp) = beside(path, "tmp");
    let res = (|| -> io::Result<()> {
        let mut f = create_exclusive(&tmp, false)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if res.is_err() {
        // Only a file we created: a planted file or symlink makes create_exclusive fail with
        // EEXIST/ELOOP, and then the name is not ours to remove.
        if !matches!(&res, Err(e) if e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ELOOP))
        {
            let _ = fs::remove_file(&tmp);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_symlink_is_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = d.path().join("m.json");
        std::os::unix::fs::symlink(
            &victim,
            d.path().join(format!(".m.json.tmp-{}", std::process::id())),
        )
        .unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!target.exists());
    }

    #[test]
    fn lock_stale_and_publish_order() {
        let d = tempfile::tempdir().unwrap();
        let stale = d.path().join(".x-1.raw.partial-999999");
        fs::write(&stale, b"old").unwrap();
        let other = d.path().join(".y-1.raw.partial-999999");
        fs::write(&other, b"other output").unwrap();
        let o = Outputs::begin(d.path(), "x-1").unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
        let e = Outputs::begin(d.path(), "x-1").unwrap_err().to_string();
        assert!(e.contains("another build of x-1"), "{e}");
        o.file().write_all_at(b"image", 0).unwrap();
        let mut o = o;
        let sbom = o.add_companion("spdx.json", b"sbom".to_vec()).unwrap();
        assert_eq!(sbom, d.path().join("x-1.spdx.json"));
        o.publish(b"{}").unwrap();
        assert_eq!(fs::read(&sbom).unwrap(), b"sbom");
        assert_eq!(fs::read(d.path().join("x-1.raw")).unwrap(), b"image");
        assert_eq!(fs::read(d.path().join("x-1.manifest.json")).unwrap(), b"{}");
        // A failed build leaves no temporary.
        let o = Outputs::begin(d.path(), "x-1").unwrap();
        let t = o.temp_path().to_path_buf();
        assert!(t.exists());
        drop(o);
        assert!(!t.exists());
    }

    #[test]
    fn staged_files_and_an_unpublished_image() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("x-1.raw"), b"old image").unwrap();
        // A failed build removes its staged file too.
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        let (t, _) = o.stage_file("qcow2").unwrap();
        assert!(t.exists());
        drop(o);
        assert!(!t.exists());
        // Published without the image: the staged file is renamed, the old image goes with the
        // old manifest, the records list only what was published.
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        o.keep_image(false);
        o.file().write_all_at(b"image", 0).unwrap();
        let (t, q) = o.stage_file("qcow2").unwrap();
        fs::write(&t, b"qcow2 bytes").unwrap();
        let temp = o.temp_path().to_path_buf();
        let r = o.companion_records().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].path.as_str(), r[0].size), ("x-1.qcow2", 11));
        o.publish(b"{}").unwrap();
        assert_eq!(fs::read(&q).unwrap(), b"qcow2 bytes");
        assert!(!t.exists() && !temp.exists());
        assert!(!d.path().join("x-1.raw").exists());
    }

    #[test]
    fn companion_directory_staged_published_and_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let stale = d.path().join(".x-1.pxe.partial-999999");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("big"), b"old").unwrap();
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        assert!(!stale.exists());
        let t = o.add_dir("pxe").unwrap();
        fs::write(t.join("b"), b"bb").unwrap();
        fs::write(t.join("a"), b"a").unwrap();
        let r = o.dir_records().unwrap();
        assert_eq!(
            r.iter()
                .map(|e| (e.path.as_str(), e.size))
                .collect::<Vec<_>>(),
            [("x-1.pxe/a", 1), ("x-1.pxe/b", 2)]
        );
        // sha256("a")
        assert!(r[0].sha256.starts_with("ca978112"));
        o.publish(b"{}").unwrap();
        assert!(!t.exists());
        assert_eq!(fs::read(d.path().join("x-1.pxe/b")).unwrap(), b"bb");
        // The next build replaces the directory; a failed one leaves the old one and no temp.
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        let t = o.add_dir("pxe").unwrap();
        fs::write(t.join("c"), b"c").unwrap();
        drop(o);
        assert!(!t.exists());
        assert!(d.path().join("x-1.pxe/b").exists());
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        let t = o.add_dir("pxe").unwrap();
        fs::write(t.join("c"), b"c").unwrap();
        o.publish(b"{}").unwrap();
        assert!(!d.path().join("x-1.pxe/b").exists());
        assert!(d.path().join("x-1.pxe/c").exists());
        // A file under the directory's name is refused, not replaced.
        fs::remove_dir_all(d.path().join("x-1.pxe")).unwrap();
        fs::write(d.path().join("x-1.pxe"), b"mine").unwrap();
        let mut o = Outputs::begin(d.path(), "x-1").unwrap();
        assert!(o
            .add_dir("pxe")
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    use std::os::unix::fs::FileExt;
}
