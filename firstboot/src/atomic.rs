//! Writes confined to a target root directory.
//!
//! Every path from a configuration is relative to the node's root (`/etc/x` means `<root>/etc/x`).
//! No path may contain `..`, and no existing component below the root may be a symlink: following
//! one could redirect a write outside the root (or onto a file the config may not touch).
//! Files are written atomically: temporary file in the same directory, fsync, rename, fsync the
//! directory; a run killed at any point leaves either the old or the new file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path {path:?} is not allowed: {why}")]
    BadPath { path: String, why: &'static str },
    #[error(
        "{path:?}: component {component:?} is a symlink inside the target root; refusing to follow \
         it (write to the real path instead)"
    )]
    Symlink { path: String, component: String },
    #[error("{path:?}: {component:?} exists and is not a directory")]
    NotDir { path: String, component: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Splits a node path (`/etc/x` or `etc/x`) into normal components, rejecting anything that could
/// climb out of the root.
pub fn components(path: &str) -> Result<Vec<String>, FsError> {
    let bad = |why| FsError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => match n.to_str() {
                Some(s) => out.push(s.to_string()),
                None => return Err(bad("not valid UTF-8")),
            },
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::Prefix(_) => return Err(bad("has a prefix")),
        }
    }
    if out.is_empty() {
        return Err(bad("names the root itself"));
    }
    Ok(out)
}

/// The target root directory all writes go into.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    /// Directories with renames not yet made durable; [`Root::flush`] fsyncs each once, so a
    /// phase that writes many files into one directory pays for one directory fsync.
    pending: std::cell::RefCell<std::collections::BTreeSet<PathBuf>>,
    /// Every entry written, created or asked for since [`Root::take_touched`]: the node's
    /// SELinux labels are set from the policy afterwards (a file created by a service gets
    /// the type its parent and the creating domain imply, not the one the policy gives the
    /// path: `/etc/rancher/rke2/config.yaml` would be `etc_runtime_t`, which RKE2 may not
    /// read). Entries that already existed are included, so a re-run after a crash also fixes
    /// what the crashed run wrote but did not relabel.
    touched: std::cell::RefCell<std::collections::BTreeSet<PathBuf>>,
    /// While a run is journalled: how to undo each change, in order (see [`Root::begin`]).
    journal: std::cell::RefCell<Option<Journal>>,
}

/// What a journalled run changed, to put back on error.
#[derive(Debug, Clone, Default)]
struct Journal {
    undo: Vec<Undo>,
    /// Host paths already recorded: only the state before the first change matters.
    seen: std::collections::BTreeSet<PathBuf>,
}

/// The state of one path before the run first changed it.
#[derive(Debug, Clone)]
enum Undo {
    /// Did not exist: remove it (a directory with everything the run put below it).
    Created(PathBuf),
    File {
        path: PathBuf,
        data: Vec<u8>,
        attrs: Attrs,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// An existing directory whose mode or owner the run set.
    Dir {
        path: PathBuf,
        attrs: Attrs,
    },
}

/// Ownership and mode of a written entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attrs {
    pub const fn root(mode: u32) -> Self {
        Attrs {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root {
            dir: dir.into(),
            pending: Default::default(),
            touched: Default::default(),
            journal: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host path of a node path, after checking it (does not create anything).
    pub fn host_path(&self, path: &str) -> Result<PathBuf, FsError> {
        let comps = components(path)?;
        let mut p = self.dir.clone();
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            // The last component may be a symlink (we replace it, never follow it).
            if i + 1 < comps.len() {
                if let Ok(md) = fs::symlink_metadata(&p) {
                    if md.file_type().is_symlink() {
                        return Err(FsError::Symlink {
                            path: path.to_string(),
                            component: c.clone(),
                        });
                    }
                    if !md.is_dir() {
                        return Err(FsError::NotDir {
                            path: path.to_string(),
                            component: c.clone(),
                        });
                    }
                }
            }
        }
        Ok(p)
    }

    /// Creates the parents of `path` (mode 0755, root-owned) as needed; returns the host path.
    fn prepare(&self, path: &str) -> Result<PathBuf, FsError> {
        let host = self.host_path(path)?;
        {
            // The entry and every directory above it up to the root: a parent an earlier,
            // crashed run created (and could not relabel) exists now and is not created again.
            let mut touched = self.touched.borrow_mut();
            let mut p = host.as_path();
            while p != self.dir && p.starts_with(&self.dir) {
                touched.insert(p.to_path_buf());
                match p.parent() {
                    Some(q) => p = q,
                    None => break,
                }
            }
        }
        if let Some(parent) = host.parent() {
            if !parent.exists() {
                // Remember the new levels and the existing directory that gained an entry.
                let mut created = Vec::new();
                let mut p = parent;
                while !p.exists() {
                    created.push(p.to_path_buf());
                    match p.parent() {
                        Some(q) => p = q,
                        None => break,
                    }
                }
                for d in created.iter().rev() {
                    self.record_created(d);
                }
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io("create directory", parent))?;
                let mut pending = self.pending.borrow_mut();
                pending.extend(created);
                pending.insert(p.to_path_buf());
            }
        }
        Ok(host)
    }

    /// Ensures a directory exists with exactly these attributes.
    pub fn mkdir(&self, path: &str, attrs: Attrs) -> Result<(), FsError> {
        let host = self.prepare(path)?;
        self.record(&host)?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                return Err(FsError::Symlink {
                    path: path.to_string(),
                    component: path.to_string(),
                })
            }
            Ok(_) => {
                return Err(FsError::NotDir {
                    path: path.to_string(),
                    component: path.to_string(),
                })
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&host)
                    .map_err(io("create directory", &host))?;
                self.note_parent(&host);
            }
        }
        std::os::unix::fs::chown(&host, Some(attrs.uid), Some(attrs.gid))
            .map_err(io("chown", &host))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(attrs.mode))
            .map_err(io("chmod", &host))?;
        Ok(())
    }

    /// Atomically replaces `path` with `data`.
    pub fn write(&self, path: &str, data: &[u8], attrs: Attrs) -> Result<(), FsError> {
        let host = self.prepare(path)?;
        if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
            return Err(FsError::BadPath {
                path: path.to_string(),
                why: "is an existing directory",
            });
        }
        self.record(&host)?;
        let tmp = temp_name(&host);
        let r = write_temp(&tmp, &host, data, attrs)
            .and_then(|()| fs::rename(&tmp, &host).map_err(io("rename into place", &host)));
        if r.is_err() {
            // Never leave the temporary file behind (its name is ours, not the node's).
            let _ = fs::remove_file(&tmp);
        }
        r?;
        self.note_parent(&host);
        Ok(())
    }

    /// Atomically makes `path` a symlink to `target` (the target is interpreted on the node and
    /// never followed here).
    pub fn symlink(&self, path: &str, target: &str) -> Result<(), FsError> {
        let host = self.prepare(path)?;
        if fs::read_link(&host).is_ok_and(|t| t == Path::new(target)) {
            return Ok(());
        }
        if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
            return Err(FsError::BadPath {
                path: path.to_string(),
                why: "is an existing directory",
            });
        }
        self.record(&host)?;
        replace_with_symlink(&host, Path::new(target))?;
        self.note_parent(&host);
        Ok(())
    }

    /// Removes a file or symlink if present.
    pub fn remove(&self, path: &str) -> Result<bool, FsError> {
        let host = self.host_path(path)?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => Err(FsError::BadPath {
                path: path.to_string(),
                why: "is a directory, expected a file or symlink",
            }),
            Ok(_) => {
                self.record(&host)?;
                fs::remove_file(&host).map_err(io("remove", &host))?;
                self.note_parent(&host);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Reads a regular file below the root (None if absent); at most `limit` bytes.
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FsError> {
        let host = self.host_path(path)?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_file() => {
                if md.len() > limit {
                    return Err(FsError::BadPath {
                        path: path.to_string(),
                        why: "is larger than the input size limit",
                    });
                }
                fs::read(&host).map(Some).map_err(io("read", &host))
            }
            Ok(_) => Err(FsError::BadPath {
                path: path.to_string(),
                why: "is not a regular file",
            }),
            Err(_) => Ok(None),
        }
    }

    /// Whether something (file, dir or symlink) exists at `path`.
    pub fn exists(&self, path: &str) -> bool {
        self.host_path(path)
            .is_ok_and(|p| fs::symlink_metadata(p).is_ok())
    }
}

/// Writes a new temporary file with these attributes and makes it durable. The name is
/// deterministic, so a leftover from a crashed run is simply replaced.
/// Errors name `host` (the file being written), never the temporary name.
fn write_temp(tmp: &Path, host: &Path, data: &[u8], attrs: Attrs) -> Result<(), FsError> {
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(tmp)
        .map_err(io("create", host))?;
    f.write_all(data).map_err(io("write", host))?;
    std::os::unix::fs::fchown(&f, Some(attrs.uid), Some(attrs.gid)).map_err(io("chown", host))?;
    f.set_permissions(fs::Permissions::from_mode(attrs.mode))
        .map_err(io("chmod", host))?;
    f.sync_all().map_err(io("fsync", host))
}

fn replace_with_symlink(host: &Path, target: &Path) -> Result<(), FsError> {
    let tmp = temp_name(host);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io("symlink", host))?;
    fs::rename(&tmp, host).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("rename into place", host)(e)
    })
}

fn libc_o_nofollow() -> i32 {
    // O_NOFOLLOW on Linux (all architectures we target); avoids a libc dependency.
    0o400000
}

fn temp_name(host: &Path) -> PathBuf {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    host.with_file_name(format!(".{name}.rke2-firstboot.tmp"))
}

impl Root {
    /// Starts journalling: from now on every change records the prior state of its path, so
    /// [`Root::rollback`] can put the root back exactly as it was (contents, mode, owner,
    /// symlink targets; entries created are removed). Replaced files are kept in memory.
    pub fn begin(&self) {
        *self.journal.borrow_mut() = Some(Journal::default());
    }

    /// Ends journalling, keeping every change.
    pub fn commit(&self) {
        *self.journal.borrow_mut() = None;
    }

    /// Undoes every change since [`Root::begin`], newest first, and ends journalling. Keeps
    /// going past a failure and returns the first one.
    pub fn rollback(&self) -> Result<(), FsError> {
        let Some(j) = self.journal.borrow_mut().take() else {
            return Ok(());
        };
        let mut first = None;
        for u in j.undo.into_iter().rev() {
            if let Err(e) = undo(&u) {
                first.get_or_insert(e);
            }
            let p = match &u {
                Undo::Created(p) => p,
                Undo::File { path, .. } | Undo::Symlink { path, .. } | Undo::Dir { path, .. } => {
                    // Restored by a new inode: its SELinux label must be set again.
                    self.touched.borrow_mut().insert(path.clone());
                    path
                }
            };
            self.note_parent(p);
        }
        let flushed = self.flush();
        match first {
            Some(e) => Err(e),
            None => flushed,
        }
    }

    fn record_created(&self, host: &Path) {
        if let Some(j) = self.journal.borrow_mut().as_mut() {
            if j.seen.insert(host.to_path_buf()) {
                j.undo.push(Undo::Created(host.to_path_buf()));
            }
        }
    }

    /// Records the state of `host` before a change (no-op when not journalling or already seen).
    fn record(&self, host: &Path) -> Result<(), FsError> {
        let mut guard = self.journal.borrow_mut();
        let Some(j) = guard.as_mut() else {
            return Ok(());
        };
        if j.seen.contains(host) {
            return Ok(());
        }
        let path = host.to_path_buf();
        let u = match fs::symlink_metadata(host) {
            Err(_) => Undo::Created(path),
            Ok(md) => {
                use std::os::unix::fs::MetadataExt;
                let attrs = Attrs {
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                };
                if md.file_type().is_symlink() {
                    let target = fs::read_link(host).map_err(io("read link", host))?;
                    Undo::Symlink { path, target }
                } else if md.is_dir() {
                    Undo::Dir { path, attrs }
                } else if md.is_file() {
                    let data = fs::read(host).map_err(io("read", host))?;
                    Undo::File { path, data, attrs }
                } else {
                    return Err(FsError::BadPath {
                        path: host.display().to_string(),
                        why: "is neither a file, a directory nor a symlink",
                    });
                }
            }
        };
        j.seen.insert(host.to_path_buf());
        j.undo.push(u);
        Ok(())
    }

    /// The host paths touched since the last call, sorted (see the `touched` field).
    pub fn take_touched(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.touched.borrow_mut())
            .into_iter()
            .collect()
    }

    fn note_parent(&self, host: &Path) {
        if let Some(parent) = host.parent() {
            self.pending.borrow_mut().insert(parent.to_path_buf());
        }
    }

    /// Makes every rename, link and new directory so far durable (fsync of each directory
    /// touched). Callers flush at the end of each phase, so a later phase (and the completion
    /// stamp above all) never becomes durable before an earlier one.
    pub fn flush(&self) -> Result<(), FsError> {
        let dirs = std::mem::take(&mut *self.pending.borrow_mut());
        for d in dirs {
            match File::open(&d).and_then(|f| f.sync_all()) {
                // Removed again (a rollback): its parent is in the set and carries the removal.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.map_err(io("fsync directory", &d))?,
            }
        }
        Ok(())
    }
}

/// Puts one path back as it was.
fn undo(u: &Undo) -> Result<(), FsError> {
    match u {
        Undo::Created(p) => match fs::symlink_metadata(p) {
            // Everything below a directory the run created was created by the run too.
            Ok(md) if md.is_dir() => fs::remove_dir_all(p).map_err(io("remove", p)),
            Ok(_) => fs::remove_file(p).map_err(io("remove", p)),
            Err(_) => Ok(()),
        },
        Undo::File { path, data, attrs } => {
            let tmp = temp_name(path);
            write_temp(&tmp, path, data, *attrs)
                .and_then(|()| fs::rename(&tmp, path).map_err(io("restore", path)))
                .inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                })
        }
        Undo::Symlink { path, target } => replace_with_symlink(path, target),
        Undo::Dir { path, attrs } => {
            std::os::unix::fs::chown(path, Some(attrs.uid), Some(attrs.gid))
                .map_err(io("chown", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(attrs.mode))
                .map_err(io("chmod", path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn touched_covers_entries_and_every_existing_parent() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path());
        r.write("/a/b/c", b"x", Attrs::root(0o644)).unwrap();
        let want: Vec<PathBuf> = ["a", "a/b", "a/b/c"]
            .iter()
            .map(|p| t.path().join(p))
            .collect();
        assert_eq!(r.take_touched(), want);
        assert!(r.take_touched().is_empty());
        // A later run (after a crash) finds a and a/b existing and must still report them,
        // so their labels get repaired; the root itself is never included.
        let r = Root::new(t.path());
        r.symlink("/a/b/d", "/x").unwrap();
        r.mkdir("/a", Attrs::root(0o755)).unwrap();
        let want: Vec<PathBuf> = ["a", "a/b", "a/b/d"]
            .iter()
            .map(|p| t.path().join(p))
            .collect();
        assert_eq!(r.take_touched(), want);
    }

    #[test]
    fn rollback_restores_replaced_and_removes_created() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/keep"), b"old").unwrap();
        fs::set_permissions(t.path().join("etc/keep"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/a", t.path().join("etc/l")).unwrap();
        fs::write(t.path().join("etc/gone"), b"g").unwrap();
        let r = Root::new(t.path());
        r.begin();
        r.write("/etc/keep", b"new", Attrs::root(0o600)).unwrap();
        r.write("/etc/keep", b"newer", Attrs::root(0o644)).unwrap();
        r.symlink("/etc/l", "/b").unwrap();
        r.remove("/etc/gone").unwrap();
        r.mkdir("/etc", Attrs::root(0o700)).unwrap();
        r.write("/var/lib/x/y", b"y", Attrs::root(0o600)).unwrap();
        r.take_touched();
        r.rollback().unwrap();
        // What was put back (new inodes) is reported for relabelling; what was removed is not.
        let touched = r.take_touched();
        for p in ["etc", "etc/keep", "etc/l", "etc/gone"] {
            assert!(touched.contains(&t.path().join(p)), "{p}: {touched:?}");
        }
        assert!(!touched.iter().any(|p| p.starts_with(t.path().join("var"))));
        assert_eq!(fs::read(t.path().join("etc/keep")).unwrap(), b"old");
        let md = fs::metadata(t.path().join("etc/keep")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_link(t.path().join("etc/l")).unwrap(),
            Path::new("/a")
        );
        assert_eq!(fs::read(t.path().join("etc/gone")).unwrap(), b"g");
        assert!(!t.path().join("var").exists());
        let mut names: Vec<_> = fs::read_dir(t.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["gone", "keep", "l"]);
    }

    #[test]
    fn rejects_traversal() {
        assert!(matches!(
            components("/etc/../../x"),
            Err(FsError::BadPath { .. })
        ));
        assert!(components("/").is_err());
        assert_eq!(components("/etc/./x").unwrap(), vec!["etc", "x"]);
    }

    #[test]
    fn refuses_symlinked_parent_and_replaces_final_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("etc")).unwrap();
        let root = Root::new(t.path());
        let e = root.write("/etc/passwd", b"x", Attrs::root(0o644));
        assert!(matches!(e, Err(FsError::Symlink { .. })), "{e:?}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        fs::create_dir(t.path().join("var")).unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("var/f")).unwrap();
        root.write("/var/f", b"new", Attrs::root(0o600)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let md = fs::symlink_metadata(t.path().join("var/f")).unwrap();
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o600);
    }

    #[test]
    fn leftover_temp_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/.x.rke2-firstboot.tmp"), b"half").unwrap();
        root.write("etc/x", b"full", Attrs::root(0o644)).unwrap();
        let names: Vec<_> = fs::read_dir(t.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x")]);
    }
}
