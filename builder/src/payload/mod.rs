//! The RKE2 payload: a release directory (as an operator downloads it for an air-gapped
//! install) verified against its `sha256sum-amd64.txt` while it is streamed, and installed into
//! the read-only root: binary, units rewritten for `/usr`, env files, sysctls, modules, air-gap
//! image tarballs (checked complete against the release's image lists), and optionally the CIS
//! profile, an SELinux policy module for the rke2 paths, and the FIPS gate on the binary's Go
//! build information. Runs in the compose stage, before SELinux labelling.
//!
//! Nothing here enables a unit: the first-boot agent chooses the role. `rke2-uninstall.sh` is
//! left out: nothing can uninstall from an immutable root; a new image replaces the old one.
//!
//! # Using a real release
//!
//! Download, from the RKE2 release page of the version you want (e.g. `v1.31.5+rke2r1`), into
//! one directory: `sha256sum-amd64.txt`, `rke2.linux-amd64.tar.gz`, and for every part you
//! preload `rke2-images-<part>.linux-amd64.tar.zst` (or `.tar.gz`) with its
//! `rke2-images-<part>.linux-amd64.txt` (or the legacy `rke2-images.linux-amd64.tar.zst` and
//! `.txt`). Files the definition does not use need not be there. Then:
//!
//! ```yaml
//! rke2:
//!   artifacts: rke2-release/        # relative to the definition
//!   version: v1.31.5+rke2r1         # must match the binary's build information
//!   cni: canal                      # default; `cilium`, `calico`, `multus,canal`, `none`
//!   images: [core, canal]           # default: core + the CNI's parts
//!   config: {write-kubeconfig-mode: "0640"}
//! ```
//!
//! Tests use a generated release around a stand-in `rke2` (crate `rke2-testsupport`, a test
//! double); nothing here knows the difference.
//!
//! # Where things go
//!
//! | what | path in the image |
//! |------|-------------------|
//! | binary, `rke2-killall.sh` | `/usr/bin/` |
//! | units and env files (not enabled) | `/usr/lib/systemd/system/rke2-{server,agent}.{service,env}` |
//! | air-gap tarballs | `/usr/share/rke2-image/images/` (first boot links them into `/var/lib/rancher/rke2/agent/images/`) |
//! | extra manifests | `/usr/share/rke2-image/manifests/` (first boot links them on servers) |
//! | baked config | `/etc/rancher/rke2/config.yaml.d/10-rke2-image.yaml` (later files override) |
//! | registries / proxy | `/etc/rancher/rke2/registries.yaml`, `/etc/default/rke2-{server,agent}` |
//! | modules, sysctls | `/etc/modules-load.d/rke2.conf`, `/usr/lib/sysctl.d/90-rke2-networking.conf`, CIS: `/etc/sysctl.d/60-rke2-cis.conf` |

pub mod airgap;
pub mod artifacts;
pub mod cis;
pub mod fips;
pub mod install;
pub mod registries;
pub mod selinux_policy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rke2_image_contract::manifest::{Check, Input};
use serde::Deserialize;

use crate::tree::{Tree, TreeError};

/// The definition's `rke2:` section. Paths are relative to the definition file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rke2Section {
    /// Directory holding the release artifacts and `sha256sum-amd64.txt`. Without it the
    /// release `version` comes from the release cache (`rke2-image release pull/import`).
    #[serde(default)]
    pub artifacts: Option<String>,
    /// Release version, e.g. `v1.31.5+rke2r1`.
    pub version: String,
    /// Air-gap tarballs to preload: parts (`core`, `canal`, ...) or `legacy` (the combined
    /// `rke2-images` tarball). Default: `core` plus the CNI's parts. `[]` preloads nothing.
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// CNI plugin(s), comma separated as rke2's `cni:` takes them. Default `canal`.
    #[serde(default)]
    pub cni: Option<String>,
    /// Default rke2 configuration, written to `config.yaml.d/` (node config can override).
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    /// A `registries.yaml` to bake in.
    #[serde(default)]
    pub registries: Option<String>,
    /// Extra manifests / HelmChartConfig files (`.yaml`/`.yml`) for the server to apply.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// HTTP proxy settings for the rke2 units.
    #[serde(default)]
    pub proxy: Option<Proxy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Proxy {
    #[serde(default)]
    pub http_proxy: Option<String>,
    #[serde(default)]
    pub https_proxy: Option<String>,
    #[serde(default)]
    pub no_proxy: Option<String>,
}

/// A validated `rke2:` section; every path absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Rke2Spec {
    /// Empty until [`crate::release::resolve`] points it at the cache when
    /// `from_release_cache`.
    pub artifacts: PathBuf,
    /// No `artifacts:` in the definition: the release comes from the release cache.
    pub from_release_cache: bool,
    /// Where the release came from, for the manifest, without host paths: `dir:<version>`,
    /// the release URL, or `import:<version>`.
    pub origin: String,
    pub version: String,
    /// Parts to preload, in the order given, without duplicates.
    pub images: Vec<String>,
    /// CNI plugins, `none` removed.
    pub cni: Vec<String>,
    pub config: BTreeMap<String, serde_json::Value>,
    pub registries: Option<PathBuf>,
    pub manifests: Vec<PathBuf>,
    pub proxy: Option<Proxy>,
}

/// Parts of a release that have their own tarball and image list.
pub use rke2_image_contract::release::IMAGE_PARTS as PARTS;
/// The legacy combined tarball (core + canal).
pub const LEGACY: &str = "legacy";
const CNIS: &[&str] = &["canal", "cilium", "calico", "multus", "flannel", "none"];

impl Rke2Spec {
    pub fn from_section(
        s: &Rke2Section,
        definition_dir: &Path,
        file: &Path,
    ) -> Result<Rke2Spec, PayloadError> {
        let bad = |key: &str, message: String| PayloadError::Config {
            file: file.to_path_buf(),
            key: format!("rke2.{key}"),
            message,
        };
        let abs = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                definition_dir.join(p)
            }
        };
        let artifacts = match &s.artifacts {
            // Resolved through the release cache at build time.
            None => PathBuf::new(),
            Some(a) => {
                let artifacts = abs(a);
                // Absolute and free of `..`: the tree keeps these paths until the image is written.
                let artifacts = std::fs::canonicalize(&artifacts).unwrap_or(artifacts);
                if !artifacts.is_dir() {
                    return Err(bad(
                        "artifacts",
                        format!(
                            "{} is not a directory; download the release files there (see the README), or leave `artifacts:` out to use the release cache (`rke2-image release pull`)",
                            artifacts.display()
                        ),
                    ));
                }
                artifacts
            }
        };
        let v = s.version.trim();
        if !v.starts_with('v') || !v.contains("+rke2r") {
            return Err(bad(
                "version",
                format!(
                    "{:?} is not an RKE2 release version like v1.31.5+rke2r1",
                    s.version
                ),
            ));
        }
        let mut cni = Vec::new();
        for c in s
            .cni
            .as_deref()
            .unwrap_or("canal")
            .split(',')
            .map(str::trim)
        {
            if !CNIS.contains(&c) {
                return Err(bad(
                    "cni",
                    format!("unknown CNI {c:?}; rke2 takes {}", CNIS.join(", ")),
                ));
            }
            if c != "none" && !cni.contains(&c.to_string()) {
                cni.push(c.to_string());
            }
        }
        let images = match &s.images {
            Some(list) => {
                let mut out: Vec<String> = Vec::new();
                for i in list {
                    if i != LEGACY && !PARTS.contains(&i.as_str()) {
                        return Err(bad(
                            "images",
                            format!(
                                "unknown image tarball {i:?}; use {} or {LEGACY}",
                                PARTS.join(", ")
                            ),
                        ));
                    }
                    if !out.contains(i) {
                        out.push(i.clone());
                    }
                }
                out
            }
            None => std::iter::once("core".to_string())
                .chain(cni.iter().cloned())
                .collect(),
        };
        for key in s.config.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(bad(
                    "config",
                    format!("key {key:?} is not an rke2 option name"),
                ));
            }
        }
        let registries = s.registries.as_deref().map(abs);
        if let Some(r) = &registries {
            if !r.is_file() {
                return Err(bad("registries", format!("{} does not exist", r.display())));
            }
        }
        let mut manifests = Vec::new();
        for m in &s.manifests {
            let p = abs(m);
            let ext_ok = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if !p.is_file() || !ext_ok {
                return Err(bad(
                    "manifests",
                    format!("{} is not a .yaml/.yml file", p.display()),
                ));
            }
            manifests.push(p);
        }
        if let Some(p) = &s.proxy {
            for (k, v) in [
                ("httpProxy", &p.http_proxy),
                ("httpsProxy", &p.https_proxy),
                ("noProxy", &p.no_proxy),
            ] {
                if v.as_deref()
                    .is_some_and(|v| v.contains(['\n', '\r', '"', '\\']))
                {
                    return Err(bad(
                        &format!("proxy.{k}"),
                        "must be one line without quotes or backslashes".into(),
                    ));
                }
            }
        }
        Ok(Rke2Spec {
            artifacts,
            from_release_cache: s.artifacts.is_none(),
            origin: format!("dir:{v}"),
            version: v.to_string(),
            images,
            cni,
            config: s.config.clone(),
            registries,
            manifests,
            proxy: s.proxy.clone(),
        })
    }
}

/// Build settings for the payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub fips: bool,
    pub cis: bool,
    pub selinux: bool,
    pub allow_non_fips_supervisor: bool,
    pub epoch: u64,
}

/// What the payload put into the image, for the manifest and `rke2-image inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub version: String,
    /// Preloaded image references, sorted.
    pub images: Vec<String>,
    pub checks: Vec<Check>,
    pub inputs: Vec<Input>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{}: {key}: {message}", file.display())]
    Config {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: {message}", file.display())]
    Checksums { file: PathBuf, message: String },
    #[error("{name} is not listed in {} (is this the right release directory?)", sums.display())]
    NotListed { name: String, sums: PathBuf },
    #[error("{}: missing from the release directory; download it from the release page (sha256sum-amd64.txt expects sha256 {expected})", path.display())]
    Missing { path: PathBuf, expected: String },
    #[error("{}: sha256 mismatch: sha256sum-amd64.txt says {expected}, the file has {actual}; download it again", path.display())]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Archive { path: PathBuf, message: String },
    #[error("{}: zstd window of {window} bytes exceeds the rke2 image importer's limit of {limit} (2^25); recompress with `zstd --long=25`", path.display())]
    ZstdWindow {
        path: PathBuf,
        window: u64,
        limit: u64,
    },
    #[error("image {image} (listed in {list}) is in none of the preloaded tarballs ({tarballs}); add the tarball that carries it to rke2.images")]
    ImageMissing {
        image: String,
        list: String,
        tarballs: String,
    },
    #[error("FIPS: {}: {message}; build with a BoringCrypto rke2 release or pass --allow-non-fips-supervisor", binary)]
    NotFips { binary: String, message: String },
    #[error("{}: Go build information: {message}", binary)]
    BuildInfo { binary: String, message: String },
    #[error("CIS: {0}")]
    Cis(String),
    #[error("SELinux policy module: {0}")]
    Selinux(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

pub(crate) fn check(name: &str, result: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        result: result.into(),
        detail: detail.into(),
    }
}

/// Verifies and installs everything. See the module documentation.
pub fn apply(
    tree: &mut Tree,
    spec: &Rke2Spec,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Report, PayloadError> {
    if spec.from_release_cache && spec.artifacts.as_os_str().is_empty() {
        return Err(PayloadError::Invalid(format!(
            "rke2.version {}: the release was not looked up in the release cache (release::resolve)",
            spec.version
        )));
    }
    let sums = artifacts::Checksums::load(&spec.artifacts)?;
    let mut report = Report {
        version: spec.version.clone(),
        ..Report::default()
    };
    let record = |v: &artifacts::Verified, report: &mut Report| {
        report.inputs.push(Input {
            kind: "rke2-artifact".into(),
            name: v.name.clone(),
            size: v.size,
            sha256: v.sha256.clone(),
        });
    };

    // Bundle: binary, units, env files, CIS sysctl file.
    let (bundle, v) = install::read_bundle(&sums)?;
    record(&v, &mut report);
    report.checks.push(check(
        "rke2-artifacts",
        "passed",
        format!("{} verified against sha256sum-amd64.txt", v.name),
    ));
    log(&format!(
        "rke2: bundle {} verified ({} bytes)",
        v.name, v.size
    ));

    let info = fips::BuildInfo::parse(&bundle.rke2).map_err(|m| PayloadError::BuildInfo {
        binary: install::BUNDLE_BIN.into(),
        message: m,
    })?;
    if let Some(bv) = info.rke2_version() {
        if bv != spec.version {
            return Err(PayloadError::Invalid(format!(
                "rke2.version is {} but the bundle's rke2 binary was built as {bv}; fix rke2.version or the artifacts directory",
                spec.version
            )));
        }
    }
    report.checks.push(fips::gate(&info, opts, log)?);

    install::install(tree, &bundle, spec, opts)?;
    log("rke2: installed /usr/bin/rke2, rke2-server/agent units (not enabled), env files, sysctls, modules-load.d");
    report.checks.push(install::check_not_enabled(tree)?);
    report.checks.push(install::check_kernel_modules(tree)?);

    if opts.cis {
        let cis_conf = bundle.cis_sysctl.as_deref().ok_or_else(|| {
            PayloadError::Cis(format!(
                "{} has no {}; it is not an rke2 release bundle",
                v.name,
                install::BUNDLE_CIS
            ))
        })?;
        report.checks.push(cis::apply(tree, cis_conf, opts.epoch)?);
        log("rke2: CIS profile: 60-rke2-cis.conf, etcd user and group");
    }

    // Air-gap tarballs.
    let ag = airgap::preload(tree, &sums, spec, opts.epoch, log)?;
    for v in &ag.verified {
        record(v, &mut report);
    }
    report.images = ag.images;
    report.checks.push(ag.check);

    registries::apply(tree, spec, opts)?;
    if opts.selinux {
        report
            .checks
            .push(selinux_policy::apply(tree, opts.epoch, log)?);
    }
    report
        .inputs
        .sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    Ok(report)
}
