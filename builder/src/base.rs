//! `rke2-image base`: builds a Debian base root filesystem tarball with `mmdebstrap` and keeps
//! it in a content-addressed cache, so the same request is built once.
//!
//! The cache key covers everything that shapes the result (suite, variant, architecture, the
//! sorted package set, mirror, `SOURCE_DATE_EPOCH` and the mmdebstrap version). A finished
//! tarball is `<cache>/base-<key>.tar.zst` with a `sha256sum`-style sidecar
//! `<cache>/base-<key>.tar.zst.sha256`; both appear under their final names only after
//! mmdebstrap succeeded, so an interrupted run never looks like a cached result.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Packages every base gets: boot (kernel, systemd-boot), init (systemd), SELinux labelling
/// (policy + `setfiles`), the filesystem tools rke2-init and the node need, and networking
/// basics for Kubernetes (iptables, iproute2) and TLS (ca-certificates).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "ca-certificates",
    "dbus",
    "e2fsprogs",
    "iproute2",
    "iptables",
    "kmod",
    "linux-image-amd64",
    "policycoreutils",
    "selinux-policy-default",
    "systemd",
    // systemd-bless-boot and its generator (A/B updates: boot-complete.target blesses a slot).
    "systemd-boot",
    "systemd-boot-efi",
    "systemd-sysv",
    "udev",
];

/// Name of the empty package that stands in for an initramfs generator (see [`dummy_deb`]).
pub const NO_INITRAMFS_PACKAGE: &str = "rke2-image-no-initramfs";

/// mmdebstrap hook that makes a `.deb` given by path visible inside the chroot, where dpkg
/// runs (shipped with mmdebstrap itself).
const FILE_MIRROR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/file-mirror-automount";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRequest {
    pub suite: String,
    pub variant: String,
    pub architecture: String,
    pub packages: Vec<String>,
    /// A mirror URI (`http://mirror.example/debian`) or full `deb ...` sources.list lines,
    /// separated by newlines; `None` uses mmdebstrap's default (deb.debian.org plus the
    /// updates and security suites for a stable release).
    pub mirror: Option<String>,
    /// `SOURCE_DATE_EPOCH` for the run.
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseResult {
    pub path: PathBuf,
    pub key: String,
    /// True when the tarball came from the cache and mmdebstrap did not run.
    pub reused: bool,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot run {command:?}: {source} (install mmdebstrap: apt-get install mmdebstrap)")]
    Spawn { command: String, source: io::Error },
    #[error("{command} failed with {status}; last lines of its stderr:\n{stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error(
        "{path}: cached base has sha256 {actual} but its sidecar {sidecar} records {recorded}; \
         the cache is corrupt or was modified: delete both files to rebuild"
    )]
    CacheMismatch {
        path: PathBuf,
        sidecar: PathBuf,
        recorded: String,
        actual: String,
    },
    #[error(
        "{path}: cached base has no valid sidecar {sidecar} ({why}); delete the tarball to rebuild"
    )]
    CacheSidecar {
        path: PathBuf,
        sidecar: PathBuf,
        why: String,
    },
    #[error("base request: {0}")]
    BadRequest(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BaseError + '_ {
    move |source| BaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BaseRequest {
    /// bookworm, minbase, amd64, [`DEBIAN_PACKAGES`], `SOURCE_DATE_EPOCH` = `epoch`.
    pub fn debian_default(epoch: u64) -> BaseRequest {
        BaseRequest {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            architecture: "amd64".into(),
            packages: DEBIAN_PACKAGES.iter().map(|p| p.to_string()).collect(),
            mirror: None,
            epoch,
        }
    }

    /// The package set as it is hashed and passed on: sorted, de-duplicated, blanks dropped.
    pub fn canonical_packages(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .packages
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// sha256 (hex) over a canonical, length-prefixed encoding of every field that shapes the
    /// result, plus the mmdebstrap version and the recipe version of this module (so a change
    /// to the options below invalidates old caches).
    pub fn cache_key(&self, mmdebstrap_version: &str) -> String {
        let mut h = Sha256::new();
        let mut field = |name: &str, value: &[u8]| {
            // Length prefixes make the encoding unambiguous ("a,b" vs "a" + "b").
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((value.len() as u64).to_le_bytes());
            h.update(value);
        };
        field("recipe", RECIPE_VERSION.as_bytes());
        field("suite", self.suite.as_bytes());
        field("variant", self.variant.as_bytes());
        field("architecture", self.architecture.as_bytes());
        for p in self.canonical_packages() {
            field("package", p.as_bytes());
        }
        match &self.mirror {
            Some(m) => field("mirror", m.as_bytes()),
            None => field("no-mirror", b""),
        }
        field("epoch", self.epoch.to_string().as_bytes());
        field("mmdebstrap", mmdebstrap_version.trim().as_bytes());
        hex::encode(h.finalize())
    }

    fn validate(&self) -> Result<(), BaseError> {
        let simple = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        };
        for (name, v) in [
            ("suite", &self.suite),
            ("variant", &self.variant),
            ("architecture", &self.architecture),
        ] {
            if !simple(v) {
                return Err(BaseError::BadRequest(format!(
                    "{name} {v:?} is empty or has characters other than letters, digits and -_.+"
                )));
            }
        }
        for p in self.canonical_packages() {
            // Names go into a comma-separated --include; apt syntax like pkg=ver or pkg/suite
            // is fine, separators and whitespace are not.
            if p.contains(',') || p.contains(char::is_whitespace) || p.starts_with('-') {
                return Err(BaseError::BadRequest(format!(
                    "package {p:?} is not a single apt package name"
                )));
            }
        }
        Ok(())
    }
}

/// Bumped whenever the mmdebstrap options below change what a base contains.
const RECIPE_VERSION: &str = "2";

/// `mmdebstrap --version`, trimmed (e.g. `mmdebstrap 1.3.5`).
pub fn mmdebstrap_version() -> Result<String, BaseError> {
    let out = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map_err(|source| BaseError::Spawn {
            command: "mmdebstrap --version".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BaseError::Failed {
            command: "mmdebstrap --version".into(),
            status: out.status.to_string(),
            stderr_tail: tail(&out.stderr, 20),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Final path of the cached tarball for `key`.
pub fn cached_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("base-{key}.tar.zst"))
}

fn sidecar_path(tarball: &Path) -> PathBuf {
    let mut s = tarball.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// sha256 and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BaseError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Returns the cached tarball `<cache>/base-<key>.tar.zst` if present (after checking the
/// sha256 recorded in its sidecar), else runs mmdebstrap into a temporary name in the cache
/// directory and renames it into place only when complete.
pub fn ensure(req: &BaseRequest, cache_dir: &Path) -> Result<BaseResult, BaseError> {
    req.validate()?;
    let version = mmdebstrap_version()?;
    ensure_with(req, cache_dir, &version, &mut run_mmdebstrap)
}

/// [`ensure`] with the mmdebstrap version and the builder given, so the cache logic can be
/// tested without running mmdebstrap. `build(req, cache_dir, output)` must write the tarball to
/// `output` (a `.tar.zst` name inside `cache_dir`).
pub fn ensure_with(
    req: &BaseRequest,
    cache_dir: &Path,
    mmdebstrap_version: &str,
    build: &mut dyn FnMut(&BaseRequest, &Path, &Path) -> Result<(), BaseError>,
) -> Result<BaseResult, BaseError> {
    req.validate()?;
    let key = req.cache_key(mmdebstrap_version);
    let path = cached_path(cache_dir, &key);
    let sidecar = sidecar_path(&path);
    if path.exists() {
        let (actual, size) = sha256_file(&path)?;
        let recorded = read_sidecar(&path, &sidecar)?;
        if recorded != actual {
            return Err(BaseError::CacheMismatch {
                path,
                sidecar,
                recorded,
                actual,
            });
        }
        return Ok(BaseResult {
            path,
            key,
            reused: true,
            sha256: actual,
            size,
        });
    }

    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    // The name ends in .tar.zst because mmdebstrap picks the format from it; the pid keeps two
    // concurrent builds of the same key apart.
    let tmp = cache_dir.join(format!(".tmp-{}-base-{key}.tar.zst", std::process::id()));
    let tmp_sidecar = sidecar_path(&tmp);
    let result = (|| {
        build(req, cache_dir, &tmp)?;
        let (sha256, size) = sha256_file(&tmp)?;
        let file_name = format!("base-{key}.tar.zst");
        write_synced(&tmp_sidecar, format!("{sha256}  {file_name}\n").as_bytes())?;
        // Sidecar first: a crash between the renames leaves a sidecar without a tarball,
        // which the next run simply overwrites.
        fs::rename(&tmp_sidecar, &sidecar).map_err(io_err(&sidecar))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(cache_dir)?;
        Ok(BaseResult {
            path: path.clone(),
            key: key.clone(),
            reused: false,
            sha256,
            size,
        })
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&tmp_sidecar);
    }
    result
}

fn read_sidecar(path: &Path, sidecar: &Path) -> Result<String, BaseError> {
    let bad = |why: String| BaseError::CacheSidecar {
        path: path.to_path_buf(),
        sidecar: sidecar.to_path_buf(),
        why,
    };
    let text = fs::read_to_string(sidecar).map_err(|e| bad(e.to_string()))?;
    let digest = text.split_whitespace().next().unwrap_or_default();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("no sha256 digest in {text:?}")));
    }
    Ok(digest.to_ascii_lowercase())
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), BaseError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), BaseError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The mmdebstrap arguments for `req`, writing to `output`, with the stand-in package at
/// `no_initramfs_deb`.
pub fn mmdebstrap_args(req: &BaseRequest, no_initramfs_deb: &Path, output: &Path) -> Vec<String> {
    let mut include = req.canonical_packages();
    include.push(no_initramfs_deb.display().to_string());
    let mut args = vec![
        format!("--variant={}", req.variant),
        format!("--architectures={}", req.architecture),
        format!("--include={}", include.join(",")),
        // Recommends would pull apparmor and firmware with the kernel.
        "--aptopt=APT::Install-Recommends \"false\"".into(),
        "--aptopt=Acquire::Languages \"none\"".into(),
        // Documentation, manuals and translations are dead weight on a node; copyright files
        // stay for licence compliance.
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/info/*".into(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
        "--dpkgopt=path-include=/usr/share/locale/locale.alias".into(),
        "--dpkgopt=path-exclude=/usr/share/lintian/*".into(),
        format!("--hook-dir={FILE_MIRROR_HOOKS}"),
        // Build-host identity must not leak into the image (and would break reproducibility).
        "--customize-hook=rm -f \"$1/etc/resolv.conf\" \"$1/etc/hostname\"".into(),
        // Backup copies dpkg and debconf keep of their databases.
        "--customize-hook=rm -f \"$1\"/var/lib/dpkg/*-old \"$1\"/var/cache/debconf/*-old".into(),
        // The file-mirror hook bind-mounts the stand-in package at its host path and leaves
        // the (now empty) mount target and its directories behind: remove them, walking up
        // only through directories no package owns, so the base does not depend on where the
        // cache lives.
        format!(
            "--customize-hook=f=\"{deb}\"; rm -f \"$1$f\"; d=$(dirname \"$f\"); while [ \"$d\" != / ] && ! chroot \"$1\" dpkg-query -S \"$d\" >/dev/null 2>&1 && rmdir \"$1$d\" 2>/dev/null; do d=$(dirname \"$d\"); done",
            deb = no_initramfs_deb.display()
        ),
        req.suite.clone(),
        output.display().to_string(),
    ];
    if let Some(m) = &req.mirror {
        args.extend(
            m.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    args
}

fn run_mmdebstrap(req: &BaseRequest, cache_dir: &Path, output: &Path) -> Result<(), BaseError> {
    let deb = cache_dir.join(format!("{NO_INITRAMFS_PACKAGE}_1_all.deb"));
    // mmdebstrap splits --include at commas and whitespace, and the .deb path goes there.
    if deb
        .to_string_lossy()
        .contains(|c: char| c == ',' || c.is_whitespace())
    {
        return Err(BaseError::BadRequest(format!(
            "cache directory {} has a comma or whitespace in its path, which mmdebstrap's \
             --include cannot carry; choose another cache directory",
            cache_dir.display()
        )));
    }
    let bytes = dummy_deb(req.epoch)?;
    let tmp = cache_dir.join(format!(
        ".tmp-{}-{NO_INITRAMFS_PACKAGE}.deb",
        std::process::id()
    ));
    write_synced(&tmp, &bytes)?;
    fs::rename(&tmp, &deb).map_err(io_err(&deb))?;
    let args = mmdebstrap_args(req, &deb, output);
    let command = format!("mmdebstrap {}", args.join(" "));
    let out = Command::new("mmdebstrap")
        .args(&args)
        .env("SOURCE_DATE_EPOCH", req.epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .output()
        .map_err(|source| BaseError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BaseError::Failed {
            command,
            status: out.status.to_string(),
            stderr_tail: tail(&out.stderr, 30),
        });
    }
    if !output.exists() {
        return Err(BaseError::Failed {
            command,
            status: "success without creating the output".into(),
            stderr_tail: tail(&out.stderr, 30),
        });
    }
    Ok(())
}

/// An empty Debian package that `Provides: linux-initramfs-tool`.
///
/// Debian's kernel package depends on `initramfs-tools | linux-initramfs-tool`; images boot
/// with our own initrd, so initramfs-tools (and the 36 MB initrd its kernel hook would build)
/// has no place in the base. Installing this stand-in satisfies the dependency honestly: the
/// image's dpkg database says what replaced the generator.
pub fn dummy_deb(epoch: u64) -> Result<Vec<u8>, BaseError> {
    let control = format!(
        "Package: {NO_INITRAMFS_PACKAGE}\n\
         Version: 1\n\
         Architecture: all\n\
         Maintainer: rke2-image <rke2-image@localhost>\n\
         Provides: linux-initramfs-tool\n\
         Section: admin\n\
         Priority: optional\n\
         Description: no initramfs generator (rke2-image ships its own initrd)\n \
         Satisfies the kernel's dependency on an initramfs generator in images built\n \
         by rke2-image, which boot with their own initrd.\n"
    );
    let control_tar = tar_gz(epoch, &[("./control", control.as_bytes())])?;
    let data_tar = tar_gz(epoch, &[])?;
    let mut out = Vec::new();
    out.extend_from_slice(b"!<arch>\n");
    for (name, data) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar.gz", &control_tar),
        ("data.tar.gz", &data_tar),
    ] {
        // ar member header: name/16, mtime/12, uid/6, gid/6, mode/8, size/10, magic "`\n".
        let header = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            epoch,
            0,
            0,
            "100644",
            data.len()
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// A gzip'd tar holding `./` and the given files (0644, root), for [`dummy_deb`].
fn tar_gz(epoch: u64, files: &[(&str, &[u8])]) -> Result<Vec<u8>, BaseError> {
    let mem = Path::new("<in-memory .deb member>");
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_path("./").map_err(io_err(mem))?;
    dir.set_mode(0o755);
    dir.set_mtime(epoch);
    dir.set_size(0);
    dir.set_cksum();
    b.append(&dir, io::empty()).map_err(io_err(mem))?;
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(name).map_err(io_err(mem))?;
        h.set_mode(0o644);
        h.set_mtime(epoch);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).map_err(io_err(mem))?;
    }
    let gz = b.into_inner().map_err(io_err(mem))?;
    gz.finish().map_err(io_err(mem))
}

/// SOURCE_DATE_EPOCH of bases built for image builds and by `rke2-image base` alike, so both
/// share one cache entry (2026-01-01T00:00:00Z). Images clamp their own timestamps separately.
pub const DEFAULT_EPOCH: u64 = 1_767_225_600;

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> BaseRequest {
        BaseRequest::debian_default(1_700_000_000)
    }

    #[test]
    fn default_has_required_packages_and_no_initramfs_tools() {
        let p = req().canonical_packages();
        for needed in [
            "systemd",
            "systemd-sysv",
            "udev",
            "linux-image-amd64",
            "systemd-boot-efi",
            "selinux-policy-default",
            "policycoreutils",
            "e2fsprogs",
            "iptables",
            "kmod",
            "iproute2",
            "ca-certificates",
            "dbus",
        ] {
            assert!(p.iter().any(|x| x == needed), "{needed} missing");
        }
        assert!(!p.iter().any(|x| x.starts_with("initramfs-tools")));
    }

    #[test]
    fn cache_key_is_stable_and_order_independent() {
        let a = req();
        let k = a.cache_key("mmdebstrap 1.3.5");
        assert_eq!(k.len(), 64);
        assert_eq!(k, a.cache_key("mmdebstrap 1.3.5\n"));
        let mut b = a.clone();
        b.packages.reverse();
        b.packages.push("udev".into());
        b.packages.push(" ".into());
        assert_eq!(k, b.cache_key("mmdebstrap 1.3.5"));
    }

    #[test]
    fn cache_key_changes_with_each_field() {
        let base = req();
        let k = base.cache_key("mmdebstrap 1.3.5");
        let mut variants: Vec<BaseRequest> = Vec::new();
        let mut r = base.clone();
        r.suite = "trixie".into();
        variants.push(r);
        let mut r = base.clone();
        r.variant = "apt".into();
        variants.push(r);
        let mut r = base.clone();
        r.architecture = "arm64".into();
        variants.push(r);
        let mut r = base.clone();
        r.packages.push("openssh-server".into());
        variants.push(r);
        let mut r = base.clone();
        r.mirror = Some("http://mirror.internal/debian".into());
        variants.push(r);
        let mut r = base.clone();
        r.mirror = Some(String::new());
        variants.push(r);
        let mut r = base.clone();
        r.epoch += 1;
        variants.push(r);
        let mut keys: Vec<String> = variants
            .iter()
            .map(|r| r.cache_key("mmdebstrap 1.3.5"))
            .collect();
        keys.push(base.cache_key("mmdebstrap 1.4.0"));
        for (i, kk) in keys.iter().enumerate() {
            assert_ne!(&k, kk, "variant {i} did not change the key");
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "two variants share a key");
        // Moving a package between fields must not collide either.
        let mut x = base.clone();
        x.packages = vec!["a,b".into()];
        let mut y = base.clone();
        y.packages = vec!["a".into(), "b".into()];
        assert_ne!(x.cache_key("v"), y.cache_key("v"));
    }

    #[test]
    fn mirror_lines_and_options_reach_mmdebstrap() {
        let mut r = req();
        r.mirror = Some(
            "deb http://m.internal/debian bookworm main\n\
             deb http://m.internal/security bookworm-security main\n"
                .into(),
        );
        let args = mmdebstrap_args(&r, Path::new("/c/x.deb"), Path::new("/c/o.tar.zst"));
        let suite = args.iter().position(|a| a == "bookworm").unwrap();
        assert_eq!(args[suite + 1], "/c/o.tar.zst");
        assert_eq!(
            &args[suite + 2..],
            &[
                "deb http://m.internal/debian bookworm main".to_string(),
                "deb http://m.internal/security bookworm-security main".to_string()
            ]
        );
        let inc = args.iter().find(|a| a.starts_with("--include=")).unwrap();
        assert!(inc.ends_with(",/c/x.deb"));
        assert!(args.contains(&"--variant=minbase".to_string()));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = req();
        r.packages.push("a b".into());
        let err = ensure_with(&r, Path::new("/nonexistent"), "v", &mut |_, _, _| {
            panic!("must not build")
        })
        .unwrap_err();
        assert!(err.to_string().contains("\"a b\""), "{err}");
        let mut r = req();
        r.suite = "bookworm; rm".into();
        assert!(matches!(
            ensure_with(&r, Path::new("/nonexistent"), "v", &mut |_, _, _| panic!()),
            Err(BaseError::BadRequest(_))
        ));
    }

    #[test]
    fn cache_hit_does_not_build_and_checks_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let r = req();
        let key = r.cache_key("mmdebstrap 1.3.5");
        let path = cached_path(dir.path(), &key);
        fs::write(&path, b"pretend this is a tarball").unwrap();
        let digest = hex::encode(Sha256::digest(b"pretend this is a tarball"));
        fs::write(
            sidecar_path(&path),
            format!("{digest}  base-{key}.tar.zst\n"),
        )
        .unwrap();
        let res = ensure_with(&r, dir.path(), "mmdebstrap 1.3.5", &mut |_, _, _| {
            panic!("cache hit must not run mmdebstrap")
        })
        .unwrap();
        assert!(res.reused);
        assert_eq!(res.path, path);
        assert_eq!(res.sha256, digest);
        assert_eq!(res.size, 25);

        // A modified tarball is reported, not silently reused or rebuilt.
        fs::write(&path, b"tampered").unwrap();
        let err =
            ensure_with(&r, dir.path(), "mmdebstrap 1.3.5", &mut |_, _, _| panic!()).unwrap_err();
        assert!(matches!(err, BaseError::CacheMismatch { .. }), "{err}");
        assert!(err.to_string().contains("delete both files"));

        fs::remove_file(sidecar_path(&path)).unwrap();
        let err =
            ensure_with(&r, dir.path(), "mmdebstrap 1.3.5", &mut |_, _, _| panic!()).unwrap_err();
        assert!(matches!(err, BaseError::CacheSidecar { .. }), "{err}");
    }

    #[test]
    fn miss_builds_into_temp_then_renames_and_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let r = req();
        // A failing build (after writing partial output) leaves no file at all.
        let err = ensure_with(&r, &cache, "v1", &mut |_, _, out| {
            fs::write(out, b"partial").unwrap();
            Err(BaseError::Failed {
                command: "mmdebstrap".into(),
                status: "exit status: 1".into(),
                stderr_tail: "E: boom".into(),
            })
        })
        .unwrap_err();
        assert!(err.to_string().contains("E: boom"));
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 0);

        let mut seen_out = PathBuf::new();
        let res = ensure_with(&r, &cache, "v1", &mut |_, c, out| {
            assert_eq!(c, cache.as_path());
            assert!(out.starts_with(&cache));
            assert!(out.to_string_lossy().ends_with(".tar.zst"));
            assert!(!cached_path(&cache, &r.cache_key("v1")).exists());
            seen_out = out.to_path_buf();
            fs::write(out, b"built").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(!res.reused);
        assert_ne!(seen_out, res.path);
        assert_eq!(fs::read(&res.path).unwrap(), b"built");
        let side = fs::read_to_string(sidecar_path(&res.path)).unwrap();
        assert_eq!(side, format!("{}  base-{}.tar.zst\n", res.sha256, res.key));
        // Second call: a hit.
        let again = ensure_with(&r, &cache, "v1", &mut |_, _, _| panic!()).unwrap();
        assert!(again.reused);
        assert_eq!(again.sha256, res.sha256);
        // Only the two final files remain.
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
    }
}
