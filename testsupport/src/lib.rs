//! Test support for rke2-image. NOTHING here is used by production code.
//!
//! - [`buildinfo`]: writes and reads Go's `.go.buildinfo` blob (the format `go version -m`
//!   reads), so the stand-in binary can carry the build settings a real rke2 release carries.
//! - [`fixture`]: writes a directory shaped like an official RKE2 release (bundle tarball,
//!   `docker save` image tarballs, image lists, `sha256sum-amd64.txt`) around the stand-in.
//! - [`scratch`]: removes shared fixtures at exit and a test's disks when it ends (disk
//!   space on CI is finite).
//! - [`prereq`]: the one place for missing test prerequisites (fail under CI or
//!   `RKE2_TEST_STRICT`, otherwise skip with one summary line per test binary).
//! - The `rke2` binary of this crate is a TEST DOUBLE for the real `rke2`: it answers
//!   `rke2 --version` from its own build information; `rke2 server` / `rke2 agent` speak the
//!   supervisor join protocol on :9345 ([`standin`]).

pub mod buildinfo;
pub mod fixture;
pub mod iso;
pub mod pe;
pub mod prereq;
pub mod scratch;
pub mod standin;

use std::path::PathBuf;
use std::process::Command;

/// Builds (if needed) the stand-in `rke2` binary of this crate and returns its path. For tests
/// of other crates: runs `cargo build -p rke2-testsupport --bin rke2` in the same target
/// directory as the running test executable.
pub fn stand_in_binary() -> anyhow::Result<PathBuf> {
    // Once per test process: tests run on parallel threads, and a second `cargo build` or strip
    // while another thread reads the binary could hand it a half-written file.
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_stand_in().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_stand_in() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(|d| d.parent()).ok_or_else(|| {
        anyhow::anyhow!("cannot find the target directory from {}", exe.display())
    })?;
    let target_dir = profile_dir.parent().ok_or_else(|| {
        anyhow::anyhow!("cannot find the target directory from {}", exe.display())
    })?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "rke2-testsupport",
        "--bin",
        "rke2",
    ])
    .env("CARGO_TARGET_DIR", target_dir);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "building the stand-in rke2 failed: {status}"
    );
    let bin = profile_dir.join("rke2");
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(strip_debug(&bin).unwrap_or(bin))
}

/// A copy of `bin` without debug information (a debug build carrying TLS crates is ~60 MB,
/// ~10 MB stripped), which fixtures and images then carry and compress. Sections such as
/// `.go.buildinfo` stay. Refreshed when `bin` is newer; `None` (use `bin`) if strip fails.
fn strip_debug(bin: &std::path::Path) -> Option<PathBuf> {
    let dir = bin.parent()?.join("standin-stripped");
    let out = dir.join("rke2");
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    if std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m >= built)
    {
        return Some(out);
    }
    std::fs::create_dir_all(&dir).ok()?;
    // Test processes may race here: each strips to its own file, then renames atomically.
    let tmp = dir.join(format!("rke2.{}.tmp", std::process::id()));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    if !ok || std::fs::rename(&tmp, &out).is_err() {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("note: could not strip {}; using it as is", bin.display());
        return None;
    }
    Some(out)
}

/// A stand-in `rke2 server` running on this machine (bound to loopback by the caller's
/// `--bind`), with its log lines. Dropping it kills the process.
#[derive(Debug)]
pub struct ServerProcess {
    child: std::process::Child,
    pub port: u16,
    pub root: PathBuf,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Runs `<bin> server --root <root> <args>` and waits up to 30 s for it to listen.
    /// `notify_socket`: the `NOTIFY_SOCKET` it gets (none by default).
    pub fn start(
        bin: &std::path::Path,
        root: &std::path::Path,
        args: &[&str],
        notify_socket: Option<&std::path::Path>,
    ) -> anyhow::Result<ServerProcess> {
        use std::io::BufRead;
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .args(args)
            .arg("--root")
            .arg(root)
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::process::Stdio::piped());
        if let Some(n) = notify_socket {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let mut child = cmd.spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr pipe"))?;
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = Vec::new();
        let port = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(l) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("stand-in server did not listen; log:\n{}", seen.join("\n"));
            };
            if let Some(p) = l
                .strip_prefix("rke2-standin: listening on ")
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            {
                break p;
            }
            seen.push(l);
        };
        Ok(ServerProcess {
            child,
            port,
            root: root.to_path_buf(),
            log: rx,
        })
    }

    /// The `K10…` token the server wrote.
    pub fn token(&self) -> anyhow::Result<String> {
        let p = self.root.join("var/lib/rancher/rke2/server/token");
        Ok(std::fs::read_to_string(&p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .trim()
            .to_string())
    }

    /// Log lines received so far.
    pub fn drain_log(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift64 from `state`, low byte of each step): test
/// data whose mix-ups cannot go unnoticed. `state` must not be 0.
pub fn noise(state: u64, n: usize) -> Vec<u8> {
    let mut x = state;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
