//! Disk hygiene for tests: the CI machine's free space is not ours to set, and a run that
//! leaves gigabytes behind fails later tests with "No space left on device".
//!
//! - [`remove_at_exit`]: for fixtures shared through a `static` (a `OnceLock`): statics are
//!   never dropped, so a `TempDir` held in one outlives the process. The paths are removed by
//!   an `atexit` handler, which runs when the test harness returns or calls `exit`, whether or
//!   not tests failed.
//! - [`Scratch`]: a test's own disks and work files, removed when the test ends — unless it
//!   panicked outside CI, so a developer can look at what failed (under CI nobody can, and the
//!   space matters more).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

extern "C" fn remove_registered() {
    // A poisoned lock means a test panicked while registering: the paths are still valid.
    let paths = match AT_EXIT.lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for p in paths.iter().rev() {
        remove(p);
    }
}

/// Removes `path` (a file or a directory tree) when the process exits.
pub fn remove_at_exit(path: impl Into<PathBuf>) {
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function without arguments; it only touches
        // its own static and the file system.
        unsafe {
            libc::atexit(remove_registered);
        }
    });
    let path = path.into();
    match AT_EXIT.lock() {
        Ok(mut g) => g.push(path),
        Err(p) => p.into_inner().push(path),
    }
}

/// Removes a file or a directory tree; a path that is already gone is fine.
pub fn remove(path: &Path) {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = r {
        eprintln!("could not remove {}: {e}", path.display());
    }
}

/// A test's scratch paths, removed when dropped (see the module documentation).
#[derive(Debug, Default)]
pub struct Scratch(Vec<PathBuf>);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Adds `path` and returns it, so a declaration reads `let disk = s.add(dir.join(..))`.
    pub fn add(&mut self, path: impl Into<PathBuf>) -> PathBuf {
        let p = path.into();
        self.0.push(p.clone());
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("CI").is_none() {
            return;
        }
        for p in self.0.iter().rev() {
            remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_removes_files_and_trees_and_tolerates_missing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk.raw");
        let t = d.path().join("tree");
        std::fs::write(&f, b"x").unwrap();
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        {
            let mut s = Scratch::new();
            s.add(&f);
            s.add(&t);
            s.add(d.path().join("never-created"));
        }
        assert!(!f.exists());
        assert!(!t.exists());
        assert!(d.path().exists());
    }
}
