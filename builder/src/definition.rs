//! Image definitions (`images/*.yaml`): versioned, parsed strictly.
//!
//! The `apiVersion` and `kind` are read first; a definition of another version is refused
//! before any other key is looked at. Then the whole document is parsed with unknown keys,
//! duplicate keys, wrong types and YAML 1.1 booleans (`yes`/`on`) rejected; every error names
//! the file, the line and the key. Relative paths resolve against the definition's directory
//! and must exist.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Options, Spanned};

pub const API_VERSION: &str = "rke2-image.io/v1alpha1";
pub const KIND: &str = "Image";
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;
/// Partition size bounds: FAT32 needs 65525 clusters (64 MiB with 512-byte clusters... and
/// firmware expects FAT32); 32 GiB is FAT32's customary ceiling and far above any ESP; 16 TiB
/// keeps the root and its hash tree within what EROFS and ext4-hosted image files handle;
/// rke2-init needs 256 MiB to create the state partition.
const ESP_MIN: u64 = 64 * MIB;
const ESP_MAX: u64 = 32 * GIB;
const ROOT_MAX: u64 = 16 * TIB;
const STATE_MIN: u64 = 256 * MIB;
const STATE_MAX: u64 = 64 * TIB;
/// Timestamps must fit the 32-bit fields of cpio (the initrd) and FAT.
pub const EPOCH_MAX: u64 = u32::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub struct DefinitionError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Sizes are written as bytes (`268435456`) or with a binary unit (`256MiB`, `2GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or with a binary unit, e.g. 256MiB or 2GiB")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n).map(Size).map_err(|_| {
                    E::custom(format!("{n} is negative; expected a size such as 256MiB"))
                })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 256MiB or 2GiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        "TiB" => 1024 * 1024 * MIB,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KiB, MiB, GiB or TiB (binary units)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelinuxMode {
    Enforcing,
    Permissive,
    Disabled,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDefinition {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: Option<Spanned<String>>,
    #[serde(default)]
    epoch: Option<Spanned<u64>>,
    base: Spanned<RawBase>,
    #[serde(default)]
    overlays: Vec<RawOverlay>,
    #[serde(default)]
    kernel: RawKernel,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    initrd: RawInitrd,
    #[serde(default)]
    output: RawOutput,
    /// The RKE2 payload: release artifacts, air-gap images, default config.
    #[serde(default)]
    rke2: Option<Spanned<crate::payload::Rke2Section>>,
    /// The root filesystem's storage (issue 16).
    #[serde(default)]
    rootfs: RawRootfs,
    /// Sign the manifest with this ed25519 key (PKCS#8 PEM).
    #[serde(default)]
    signing: Option<RawSigning>,
    /// A/B updates: extra trusted keys and the boot-counting policy (issue 13).
    #[serde(default)]
    update: Option<Spanned<RawUpdate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUpdate {
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
    #[serde(default)]
    tries: Option<Spanned<u64>>,
    #[serde(default)]
    health_timeout_seconds: Option<Spanned<u64>>,
}

/// Bounds of `update.tries` (systemd-boot counts tries in the file name; more than a handful
/// only delays the fallback) and `update.healthTimeoutSeconds` (ten seconds to a day).
pub const UPDATE_TRIES: std::ops::RangeInclusive<u64> = 1..=10;
pub const UPDATE_HEALTH_TIMEOUT: std::ops::RangeInclusive<u64> = 10..=86400;

/// The `update:` section: what every image bakes in for `rke2-update` (see
/// `rke2_image_contract::update`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateSpec {
    /// Extra ed25519 public keys (SPKI PEM) a bundle may be signed with, in definition order;
    /// each checked at load.
    pub trusted_keys: Vec<PathBuf>,
    pub policy: rke2_image_contract::update::Policy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBase {
    #[serde(default)]
    archive: Option<Spanned<String>>,
    #[serde(default)]
    debian: Option<RawDebian>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRootfs {
    /// `none`, `lz4`, `lz4hc` or `lz4hc:LEVEL`.
    #[serde(default)]
    compression: Option<Spanned<String>>,
}

/// The root's compression when `rootfs.compression` is not given: LZ4HC at liblz4's default
/// level (the lz4hc-root boot tests in qemu-tests/tests/boot.rs pass with it).
pub const DEFAULT_COMPRESSION: crate::erofs::Compression =
    crate::erofs::Compression::Lz4hc(crate::lz4::HC_LEVEL_DEFAULT);

/// Parses a `rootfs.compression` value.
pub fn parse_compression(v: &str) -> Option<crate::erofs::Compression> {
    use crate::erofs::Compression;
    match v {
        "none" => Some(Compression::None),
        "lz4" => Some(Compression::Lz4),
        "lz4hc" => Some(Compression::Lz4hc(crate::lz4::HC_LEVEL_DEFAULT)),
        _ => {
            let level: u8 = v.strip_prefix("lz4hc:")?.parse().ok()?;
            (1..=crate::lz4::HC_LEVEL_MAX)
                .contains(&level)
                .then_some(Compression::Lz4hc(level))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDebian {
    #[serde(default = "default_suite")]
    suite: String,
    #[serde(default)]
    mirror: Option<String>,
    /// Added to the default package list.
    #[serde(default)]
    packages: Vec<String>,
}

fn default_suite() -> String {
    "bookworm".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOverlay {
    source: Spanned<String>,
    #[serde(default = "default_target")]
    target: String,
    #[serde(default)]
    owner: Option<Spanned<String>>,
    /// Glob (relative to `source`) -> octal mode string.
    #[serde(default)]
    modes: BTreeMap<String, Spanned<String>>,
}

fn default_target() -> String {
    "/".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKernel {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    cmdline: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSecurity {
    #[serde(default = "yes")]
    fips: bool,
    #[serde(default = "enforcing")]
    selinux: SelinuxMode,
    /// RKE2's CIS profile: sysctls, etcd user, `profile: cis`.
    #[serde(default)]
    cis: bool,
    /// Sign systemd-boot and the UKIs with this db key (PEM key and certificate).
    #[serde(default)]
    secure_boot: Option<RawSecureBoot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecureBoot {
    key: String,
    cert: String,
}

fn yes() -> bool {
    true
}
fn enforcing() -> SelinuxMode {
    SelinuxMode::Enforcing
}

impl Default for RawSecurity {
    fn default() -> Self {
        RawSecurity {
            fips: true,
            selinux: SelinuxMode::Enforcing,
            cis: false,
            secure_boot: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDisk {
    #[serde(default = "default_esp")]
    esp_size: Spanned<Size>,
    #[serde(default = "default_root")]
    root_size: Spanned<Size>,
    /// Free space left after the last partition for the state partition `rke2-init` creates
    /// on first boot (more when the image is written to a larger disk). Sparse in the file.
    #[serde(default = "default_state")]
    state_size: Spanned<Size>,
}

fn default_esp() -> Spanned<Size> {
    Spanned::new(Size(256 * MIB), Location::UNKNOWN, Location::UNKNOWN)
}
fn default_root() -> Spanned<Size> {
    Spanned::new(Size(2048 * MIB), Location::UNKNOWN, Location::UNKNOWN)
}
fn default_state() -> Spanned<Size> {
    Spanned::new(Size(1024 * MIB), Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for RawDisk {
    fn default() -> Self {
        RawDisk {
            esp_size: default_esp(),
            root_size: default_root(),
            state_size: default_state(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInitrd {
    #[serde(default)]
    init: Option<Spanned<String>>,
    /// Added to the modules the boot needs.
    #[serde(default)]
    modules: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOutput {
    #[serde(default = "default_output")]
    directory: String,
    /// `output.formats`: which deliverables the build publishes (default `[raw]`).
    #[serde(default)]
    formats: Option<Vec<Spanned<String>>>,
}

fn default_output() -> String {
    "../out".into()
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            directory: default_output(),
            formats: None,
        }
    }
}

/// One deliverable of a build (`output.formats`, `build --format`). The raw disk is always
/// built (the other outputs derive from it); it is published only when `raw` is selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputFormat {
    /// `<name>-<version>.raw`: the GPT disk image.
    Raw,
    /// `<name>-<version>.qcow2`: the raw disk, compressed qcow2.
    Qcow2,
    /// `<name>-<version>.iso`: the hybrid ISO (CD and disk, UEFI) for a live boot.
    Iso,
    /// `<name>-<version>.pxe/`: network boot artifacts.
    Pxe,
    /// `<name>-<version>.update`: the signed A/B update bundle (needs `signing.key`).
    Update,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 5] = [
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Iso,
        OutputFormat::Pxe,
        OutputFormat::Update,
    ];
    /// The accepted values, for messages.
    pub const ACCEPTED: &'static str = "raw, qcow2, iso, pxe, update";

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Iso => "iso",
            OutputFormat::Pxe => "pxe",
            OutputFormat::Update => "update",
        }
    }

    pub fn parse(v: &str) -> Option<OutputFormat> {
        Self::ALL.into_iter().find(|f| f.name() == v)
    }
}

/// Checks a selection of output format names (`output.formats` or `--format`): sorted and
/// deduplicated. The error is the index of the offending value and why.
pub fn parse_formats<S: AsRef<str>>(values: &[S]) -> Result<Vec<OutputFormat>, (usize, String)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let v = v.as_ref();
        let f = OutputFormat::parse(v).ok_or_else(|| {
            (
                i,
                format!(
                    "{v:?} is not an output format: use one or more of {}",
                    OutputFormat::ACCEPTED
                ),
            )
        })?;
        out.push(f);
    }
    if out.is_empty() {
        return Err((
            0,
            format!(
                "is empty: list at least one of {} (default: [raw])",
                OutputFormat::ACCEPTED
            ),
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `output` section, beyond its directory ([`Definition::output_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Sorted and deduplicated; never empty. `build --format` replaces it.
    pub formats: Vec<OutputFormat>,
}

/// Where the base root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// A tar, tar.gz or tar.zst archive on the build host.
    Archive(PathBuf),
    /// Built with mmdebstrap (and cached) by `rke2-image base`.
    Debian {
        suite: String,
        mirror: Option<String>,
        packages: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDef {
    pub source: PathBuf,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub modes: Vec<(String, u32)>,
}

/// A validated definition: every path absolute and checked, every size aligned.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The definition file itself.
    pub file: PathBuf,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub epoch: Option<u64>,
    pub base: BaseSource,
    pub overlays: Vec<OverlayDef>,
    pub kernel_version: Option<String>,
    pub cmdline: Vec<String>,
    pub fips: bool,
    pub selinux: SelinuxMode,
    pub cis: bool,
    pub secure_boot: Option<crate::secureboot::SigningKeys>,
    /// `signing.key`: ed25519 private key (PKCS#8 PEM) that signs the manifest; read and
    /// checked by the build before it writes anything.
    pub signing: Option<PathBuf>,
    /// `update:` (defaults when absent): baked into every image.
    pub update: UpdateSpec,
    pub rke2: Option<crate::payload::Rke2Spec>,
    pub esp_size: u64,
    pub root_size: u64,
    pub state_size: u64,
    pub init: Option<PathBuf>,
    pub extra_modules: Vec<String>,
    pub output_dir: PathBuf,
    pub output: Output,
    /// sha256 and length of the definition bytes that were parsed (for the manifest; the file
    /// is not read a second time).
    pub source_sha256: String,
    pub source_len: u64,
    /// How the root EROFS stores file data (`rootfs.compression`).
    pub compression: crate::erofs::Compression,
}

fn yaml_options() -> Options {
    let mut o = Options::default();
    // `fips: yes` must not silently mean true.
    o.strict_booleans = true;
    o.with_snippet = false;
    o
}

/// Line and message of a saphyr error, without its own location suffix (we print the file
/// and line ourselves, in the `file:line: key: message` form editors understand).
fn saphyr_parts(e: &serde_saphyr::Error) -> (Option<u64>, String) {
    let line = e.location().as_ref().and_then(line_of);
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let msg = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    (line, msg.trim().to_string())
}

fn line_of(loc: &Location) -> Option<u64> {
    match loc.line() {
        0 => None,
        l => Some(l),
    }
}

impl Definition {
    /// Reads and validates a definition file.
    pub fn load(file: &Path) -> Result<Definition, DefinitionError> {
        let err = |line: Option<u64>, key: &str, message: String| DefinitionError {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        };
        let bytes = crate::limits::read_host_file(file, crate::limits::HOST_TEXT, "definition")
            .map_err(|m| err(None, "", m))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            err(Some(line), "", "is not UTF-8 text".into())
        })?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Self::parse(&text, file, &dir)
    }

    /// Parses `text` as if read from `file`; relative paths resolve against `dir`.
    pub fn parse(text: &str, file: &Path, dir: &Path) -> Result<Definition, DefinitionError> {
        let err = |line: Option<u64>, key: &str, message: String| DefinitionError {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        };
        // Version first: a future or foreign document must be refused as such, not as a pile of
        // unknown keys.
        let header: Header =
            serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
                let (line, msg) = saphyr_parts(&e);
                err(
                    line,
                    "",
                    format!("not a valid YAML definition: {}", clean_yaml_message(&msg)),
                )
            })?;
        match &header.api_version {
            None => {
                return Err(err(
                    Some(1),
                    "apiVersion",
                    format!("missing; this tool reads `apiVersion: {API_VERSION}`"),
                ))
            }
            Some(v) if v.value != API_VERSION => {
                return Err(err(
                    line_of(&v.referenced),
                    "apiVersion",
                    format!(
                        "unsupported version {:?}; this tool reads {API_VERSION:?}",
                        v.value
                    ),
                ))
            }
            _ => {}
        }
        match &header.kind {
            Some(k) if k.value == KIND => {}
            Some(k) => {
                return Err(err(
                    line_of(&k.referenced),
                    "kind",
                    format!("is {:?}; expected {KIND:?}", k.value),
                ))
            }
            None => {
                return Err(err(
                    Some(1),
                    "kind",
                    format!("missing; expected `kind: {KIND}`"),
                ))
            }
        }
        let raw: RawDefinition = serde_saphyr::from_str_with_options(text, yaml_options())
            .map_err(|e| {
                let (line, msg) = saphyr_parts(&e);
                let key = msg
                    .split('`')
                    .nth(1)
                    .filter(|_| {
                        msg.starts_with("unknown field") || msg.starts_with("missing field")
                    })
                    .unwrap_or("")
                    .to_string();
                let hint = if msg.starts_with("unknown field") {
                    " (check the spelling; see the definition reference in the README)"
                } else {
                    ""
                };
                // Type errors carry no key of their own: name the one on the error's line.
                let key = match (key.is_empty(), line) {
                    (true, Some(l)) => key_at_line(text, l),
                    _ => key,
                };
                err(line, &key, format!("{}{hint}", clean_yaml_message(&msg)))
            })?;

        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                lexical_join(dir, p)
            }
        };

        // Both become os-release IMAGE_ID/IMAGE_VERSION (os-release(5): lower-case letters,
        // digits, `.`, `_`, `-`) and the output file name.
        let name = raw.name.value.clone();
        if !crate::compose::valid_os_release_value(&name) || name.starts_with('.') {
            return Err(err(
                line_of(&raw.name.referenced),
                "name",
                format!("{name:?} is not a valid image name: use lower-case letters, digits, '-', '_' and '.', not starting with '.' (it becomes os-release IMAGE_ID and a file name)"),
            ));
        }
        let version = raw.version.value.clone();
        if !crate::compose::valid_os_release_value(&version) {
            return Err(err(
                line_of(&raw.version.referenced),
                "version",
                format!("{version:?} is not a valid version: use lower-case letters, digits, '.', '-' and '_' (it becomes os-release IMAGE_VERSION; write 1.31.5+rke2r1 as 1.31.5-rke2r1)"),
            ));
        }
        if let Some(e) = &raw.epoch {
            if e.value > EPOCH_MAX {
                return Err(err(
                    line_of(&e.referenced),
                    "epoch",
                    format!("{} is after 2106-02-07 (the largest timestamp the initrd's cpio and FAT can store is {EPOCH_MAX})", e.value),
                ));
            }
        }
        if let Some(d) = &raw.description {
            if let Some(c) = d.value.chars().find(|c| c.is_control()) {
                return Err(err(
                    line_of(&d.referenced),
                    "description",
                    format!("contains the control character {c:?}; the description becomes the boot menu title and PRETTY_NAME, one line of text"),
                ));
            }
        }

        let base_line = line_of(&raw.base.referenced);
        let base = match (&raw.base.value.archive, &raw.base.value.debian) {
            (Some(a), None) => {
                let p = resolve(&a.value);
                if !p.is_file() {
                    return Err(err(
                        line_of(&a.referenced),
                        "base.archive",
                        format!(
                            "{} {} (resolved to {}); build one with `rke2-image base` or fix the path",
                            a.value,
                            not_a_file(&p),
                            p.display()
                        ),
                    ));
                }
                BaseSource::Archive(p)
            }
            (None, Some(d)) => BaseSource::Debian {
                suite: d.suite.clone(),
                mirror: d.mirror.clone(),
                packages: d.packages.clone(),
            },
            (Some(_), Some(_)) => {
                return Err(err(base_line, "base", "give either `archive` or `debian`, not both".into()))
            }
            (None, None) => {
                return Err(err(
                    base_line,
                    "base",
                    "needs `archive: <path to a tar, tar.gz or tar.zst root filesystem>` or `debian: {}`".into(),
                ))
            }
        };

        let mut overlays = Vec::new();
        for (i, o) in raw.overlays.iter().enumerate() {
            let key = format!("overlays[{i}]");
            let src = resolve(&o.source.value);
            if !src.is_dir() {
                return Err(err(
                    line_of(&o.source.referenced),
                    &format!("{key}.source"),
                    format!(
                        "{} is not a directory (resolved to {})",
                        o.source.value,
                        src.display()
                    ),
                ));
            }
            let (uid, gid) = match &o.owner {
                None => (0, 0),
                Some(s) => parse_owner(&s.value).ok_or_else(|| {
                    err(
                        line_of(&s.referenced),
                        &format!("{key}.owner"),
                        format!("{:?} is not `uid:gid` with numeric ids (names depend on the build host)", s.value),
                    )
                })?,
            };
            let mut modes = Vec::new();
            for (glob, m) in &o.modes {
                let mode = u32::from_str_radix(m.value.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        err(
                            line_of(&m.referenced),
                            &format!("{key}.modes.{glob}"),
                            format!("{:?} is not an octal mode like \"0755\"", m.value),
                        )
                    })?;
                modes.push((glob.clone(), mode));
            }
            overlays.push(OverlayDef {
                source: src,
                target: o.target.clone(),
                uid,
                gid,
                modes,
            });
        }

        let disk = &raw.disk;
        for (key, s, min, max) in [
            ("disk.espSize", &disk.esp_size, ESP_MIN, ESP_MAX),
            ("disk.rootSize", &disk.root_size, MIB, ROOT_MAX),
            ("disk.stateSize", &disk.state_size, STATE_MIN, STATE_MAX),
        ] {
            let n = s.value.0;
            let problem = if n % MIB != 0 {
                Some("is not a multiple of 1MiB (partitions are 1 MiB aligned)")
            } else if n < min {
                Some("is below the minimum")
            } else if n > max {
                Some("is above the maximum")
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(err(
                    line_of(&s.referenced),
                    key,
                    format!(
                        "{n} bytes {p}; give {}MiB to {}MiB in whole MiB",
                        min / MIB,
                        max / MIB
                    ),
                ));
            }
        }
        if disk_size(
            disk.esp_size.value.0,
            disk.root_size.value.0,
            disk.state_size.value.0,
        )
        .is_none()
        {
            return Err(err(
                line_of(&disk.root_size.referenced),
                "disk",
                "the partitions add up to more than a disk image can hold; lower disk.rootSize or disk.stateSize".into(),
            ));
        }

        let init = match &raw.initrd.init {
            None => None,
            Some(p) => {
                let path = resolve(&p.value);
                if !path.is_file() {
                    return Err(err(
                        line_of(&p.referenced),
                        "initrd.init",
                        format!(
                            "{} {} (resolved to {})",
                            p.value,
                            not_a_file(&path),
                            path.display()
                        ),
                    ));
                }
                Some(path)
            }
        };
        for (i, c) in raw.kernel.cmdline.iter().enumerate() {
            crate::esp::check_item(&c.value)
                .map_err(|m| err(line_of(&c.referenced), &format!("kernel.cmdline[{i}]"), m))?;
        }
        let cmdline: Vec<String> = raw.kernel.cmdline.iter().map(|c| c.value.clone()).collect();
        // The longest line this definition can produce (a full root hash, slot b, every
        // security key) must survive the kernel's limit.
        let longest = crate::esp::command_line(
            &"0".repeat(64),
            'b',
            raw.security.fips,
            raw.security.selinux,
            &cmdline,
        );
        crate::esp::check_length(&longest).map_err(|m| {
            err(
                raw.kernel
                    .cmdline
                    .first()
                    .and_then(|c| line_of(&c.referenced)),
                "kernel.cmdline",
                m,
            )
        })?;

        let rke2 = match &raw.rke2 {
            None => None,
            Some(section) => Some(
                crate::payload::Rke2Spec::from_section(&section.value, dir, file).map_err(|e| {
                    let (key, message) = match e {
                        crate::payload::PayloadError::Config { key, message, .. } => (key, message),
                        other => ("rke2".to_string(), other.to_string()),
                    };
                    err(line_of(&section.referenced), &key, message)
                })?,
            ),
        };
        if raw.security.cis && rke2.is_none() {
            return Err(err(
                None,
                "security.cis",
                "the CIS profile configures RKE2; it needs an `rke2:` section".into(),
            ));
        }

        let formats = match &raw.output.formats {
            None => vec![OutputFormat::Raw],
            Some(list) => {
                let names: Vec<&str> = list.iter().map(|v| v.value.as_str()).collect();
                parse_formats(&names).map_err(|(i, m)| {
                    let line = list.get(i).and_then(|v| line_of(&v.referenced));
                    let key = if list.is_empty() {
                        "output.formats".to_string()
                    } else {
                        format!("output.formats[{i}]")
                    };
                    err(line, &key, m)
                })?
            }
        };
        let signing = raw.signing.map(|s| resolve(&s.key));
        if formats.contains(&OutputFormat::Update) && signing.is_none() {
            let line = raw
                .output
                .formats
                .as_ref()
                .and_then(|l| l.iter().find(|v| v.value == "update"))
                .and_then(|v| line_of(&v.referenced));
            return Err(err(line, "signing.key", update_needs_key()));
        }
        let update = match &raw.update {
            None => UpdateSpec::default(),
            Some(u) => parse_update(&u.value, &resolve)
                .map_err(|(l, k, m)| err(l.or_else(|| line_of(&u.referenced)), &k, m))?,
        };
        let compression = match &raw.rootfs.compression {
            None => DEFAULT_COMPRESSION,
            Some(c) => parse_compression(&c.value).ok_or_else(|| {
                err(
                    line_of(&c.referenced),
                    "rootfs.compression",
                    format!(
                        "{:?} is not a compression: use none, lz4, lz4hc or lz4hc:LEVEL with LEVEL 1 to 12",
                        c.value
                    ),
                )
            })?,
        };

        Ok(Definition {
            compression,
            file: file.to_path_buf(),
            name,
            version,
            description: raw.description.map(|d| d.value),
            epoch: raw.epoch.map(|e| e.value),
            base,
            overlays,
            kernel_version: raw.kernel.version,
            cmdline,
            fips: raw.security.fips,
            selinux: raw.security.selinux,
            cis: raw.security.cis,
            secure_boot: raw
                .security
                .secure_boot
                .map(|sb| crate::secureboot::SigningKeys {
                    key: resolve(&sb.key),
                    cert: resolve(&sb.cert),
                }),
            rke2,
            signing,
            update,
            esp_size: raw.disk.esp_size.value.0,
            root_size: raw.disk.root_size.value.0,
            state_size: raw.disk.state_size.value.0,
            init,
            extra_modules: raw.initrd.modules,
            output_dir: resolve(&raw.output.directory),
            output: Output { formats },
            source_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
            source_len: text.len() as u64,
        })
    }
}

/// Why an `update` output cannot be built without `signing.key`, and the fix.
pub fn update_needs_key() -> String {
    "an `update` output is signed with signing.key, which is not set; make a key with `openssl genpkey -algorithm ed25519 -out KEY.pem` and set `signing: {key: KEY.pem}` (or drop `update` from the formats)".into()
}

type KeyError = (Option<u64>, String, String);

/// Checks the `update:` section: every trusted key an ed25519 public key, the numbers in range.
fn parse_update(u: &RawUpdate, resolve: &dyn Fn(&str) -> PathBuf) -> Result<UpdateSpec, KeyError> {
    let mut out = UpdateSpec::default();
    for (i, k) in u.trusted_keys.iter().enumerate() {
        let key = format!("update.trustedKeys[{i}]");
        let p = resolve(&k.value);
        if !p.is_file() {
            return Err((
                line_of(&k.referenced),
                key,
                format!(
                    "{} {} (resolved to {}); give an ed25519 public key (SPKI PEM, `openssl pkey -in KEY.pem -pubout -out PUB.pem`)",
                    k.value,
                    not_a_file(&p),
                    p.display()
                ),
            ));
        }
        crate::sign::load_public(&p, "update.trustedKeys").map_err(|_| {
            (
                line_of(&k.referenced),
                key.clone(),
                format!("{} is not an ed25519 public key in PEM (SubjectPublicKeyInfo); derive one with `openssl pkey -in KEY.pem -pubout -out PUB.pem`", k.value),
            )
        })?;
        out.trusted_keys.push(p);
    }
    if let Some(t) = &u.tries {
        if !UPDATE_TRIES.contains(&t.value) {
            return Err((
                line_of(&t.referenced),
                "update.tries".into(),
                format!(
                    "{} is out of range; give {} to {} (boot tries a new slot gets before systemd-boot falls back)",
                    t.value,
                    UPDATE_TRIES.start(),
                    UPDATE_TRIES.end()
                ),
            ));
        }
        out.policy.tries = t.value as u32;
    }
    if let Some(t) = &u.health_timeout_seconds {
        if !UPDATE_HEALTH_TIMEOUT.contains(&t.value) {
            return Err((
                line_of(&t.referenced),
                "update.healthTimeoutSeconds".into(),
                format!(
                    "{} is out of range; give {} to {} seconds",
                    t.value,
                    UPDATE_HEALTH_TIMEOUT.start(),
                    UPDATE_HEALTH_TIMEOUT.end()
                ),
            ));
        }
        out.policy.health_timeout_seconds = t.value;
    }
    Ok(out)
}

/// Size of the whole disk for these partition sizes (see `pipeline`'s layout: 1 MiB GPT, the
/// ESP, two root slots each with its hash tree, the state space, 1 MiB backup GPT), or `None`
/// when it overflows.
pub fn disk_size(esp: u64, root: u64, state: u64) -> Option<u64> {
    let hash = rke2_image_contract::verity::hash_device_size(
        root / rke2_image_contract::partitions::BLOCK,
        rke2_image_contract::partitions::BLOCK as u32,
    )
    .checked_next_multiple_of(MIB)?;
    let slot = root.checked_add(hash)?;
    MIB.checked_add(esp)?
        .checked_add(slot.checked_mul(2)?)?
        .checked_add(state)?
        .checked_add(MIB)
}

/// Why `p`, which should be a regular file, is not one.
fn not_a_file(p: &Path) -> &'static str {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(_) => "cannot be read",
        Ok(m) if m.is_dir() => "is a directory, not a file",
        Ok(_) => "is not a regular file",
    }
}

/// Strips what a YAML library error says about its own internals (Rust type names, option
/// names) so the message speaks about the definition.
fn clean_yaml_message(msg: &str) -> String {
    if msg.to_lowercase().contains("duplicate") {
        return "duplicate key: each key may appear once (remove one of them)".into();
    }
    let mut m = msg.to_string();
    for internal in [" of untagged enum", " in Options", "Raw"] {
        if let Some(i) = m.find(internal) {
            m.truncate(i);
        }
    }
    m.trim_end_matches([',', ';', ' ']).to_string()
}

/// Dotted key path (`overlays[0].owner`) of the mapping key on `line` (1-based), worked out
/// from block-style indentation. Empty when the line holds no key.
fn key_at_line(text: &str, line: u64) -> String {
    // (indent, component, is a list index)
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    let render = |stack: &[(usize, String, bool)]| {
        let mut out = String::new();
        for (_, c, idx) in stack {
            if !idx && !out.is_empty() {
                out.push('.');
            }
            out.push_str(c);
        }
        out
    };
    for l in text.lines().take(line as usize) {
        let t = l.trim_start_matches(' ');
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut indent = l.len() - t.len();
        let mut rest = t;
        while rest.starts_with("- ") || rest == "-" {
            while stack
                .last()
                .is_some_and(|(i, _, idx)| *i > indent || (*i == indent && *idx))
            {
                stack.pop();
            }
            let n = counters.entry(render(&stack)).or_insert(0);
            stack.push((indent, format!("[{n}]"), true));
            *n += 1;
            rest = rest[1..].trim_start_matches(' ');
            indent = l.len() - rest.len();
        }
        let key = match rest.split_once(": ") {
            Some((k, _)) => Some(k),
            None => rest.strip_suffix(':'),
        };
        if let Some(k) = key.filter(|k| !k.starts_with(['[', '{', '"', '\'']) || k.len() > 1) {
            while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
                stack.pop();
            }
            let k = k.trim_matches(['"', '\'']);
            stack.push((indent, k.to_string(), false));
        }
    }
    render(&stack)
}

/// `dir/rel` with `.` dropped and `..` folded into a preceding normal component, so messages
/// and outputs show `out/x.raw` rather than `images/../out/x.raw`. Lexical only: a `..` after
/// a symlinked directory is kept as written.
fn lexical_join(dir: &Path, rel: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in dir.components().chain(rel.components()) {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_)))
                    && !out.is_symlink() =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `uid:gid`, both decimal and within `u32`.
fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definition, DefinitionError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.tar"), b"").unwrap();
        std::fs::create_dir(dir.path().join("ov")).unwrap();
        let r = Definition::parse(text, Path::new("images/t.yaml"), dir.path());
        r.map(|mut d| {
            // Paths are inside the temp dir; keep only what tests compare.
            d.output_dir = PathBuf::new();
            d
        })
    }

    const GOOD: &str = "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: node\nversion: 1.0.0\nbase:\n  archive: base.tar\noverlays:\n  - source: ov\n    owner: \"0:0\"\n    modes:\n      \"usr/bin/*\": \"0755\"\nsecurity:\n  fips: true\n  selinux: permissive\ndisk:\n  espSize: 128MiB\n  rootSize: 1GiB\n";

    #[test]
    fn good_definition() {
        let d = parse(GOOD).unwrap();
        assert_eq!(d.name, "node");
        assert_eq!(d.selinux, SelinuxMode::Permissive);
        assert_eq!(d.esp_size, 128 * MIB);
        assert_eq!(d.root_size, 1024 * MIB);
        assert_eq!(d.overlays[0].modes, vec![("usr/bin/*".to_string(), 0o755)]);
    }

    #[test]
    fn rootfs_compression() {
        use crate::erofs::Compression;
        assert_eq!(parse(GOOD).unwrap().compression, DEFAULT_COMPRESSION);
        for (v, want) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("lz4hc", Compression::Lz4hc(9)),
            ("lz4hc:1", Compression::Lz4hc(1)),
            ("lz4hc:12", Compression::Lz4hc(12)),
        ] {
            let d = parse(&format!("{GOOD}rootfs:\n  compression: {v}\n")).unwrap();
            assert_eq!(d.compression, want, "{v}");
        }
        for bad in ["lz4hc:0", "lz4hc:13", "zstd", "lz4:3", "LZ4"] {
            let e = parse(&format!("{GOOD}rootfs:\n  compression: {bad}\n")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line),
                ("rootfs.compression", Some(19)),
                "{e}"
            );
            assert!(e.message.contains("lz4hc:LEVEL"), "{e}");
        }
    }

    #[test]
    fn output_formats() {
        use OutputFormat::*;
        assert_eq!(parse(GOOD).unwrap().output.formats, vec![Raw]);
        let d = parse(&format!("{GOOD}output:\n  formats: [qcow2, raw, qcow2]\n")).unwrap();
        assert_eq!(d.output.formats, vec![Raw, Qcow2]);
        let d = parse(&format!("{GOOD}output:\n  formats:\n    - qcow2\n")).unwrap();
        assert_eq!(d.output.formats, vec![Qcow2]);
        let d = parse(&format!("{GOOD}output:\n  formats: [pxe, raw, pxe]\n")).unwrap();
        assert_eq!(d.output.formats, vec![Raw, Pxe]);
        let d = parse(&format!("{GOOD}output:\n  formats: [pxe, iso, raw]\n")).unwrap();
        assert_eq!(d.output.formats, vec![Raw, Iso, Pxe]);
        for (list, key, line, says) in [
            (
                "[raw, vmdk]",
                "output.formats[1]",
                19,
                "raw, qcow2, iso, pxe",
            ),
            ("[]", "output.formats", 19, "is empty"),
        ] {
            let e = parse(&format!("{GOOD}output:\n  formats: {list}\n")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.line.is_none() || e.line == Some(line), "{e}");
            assert!(e.message.contains(says), "{e}");
            assert!(e.to_string().starts_with("images/t.yaml"), "{e}");
        }
    }

    #[test]
    fn update_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.tar"), b"").unwrap();
        std::fs::create_dir(dir.path().join("ov")).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        std::fs::write(
            dir.path().join("release.pub.pem"),
            crate::sign::public_pem(&key.verifying_key()),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("junk.pem"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let parse = |t: &str| Definition::parse(t, Path::new("images/t.yaml"), dir.path());

        let d = parse(GOOD).unwrap();
        assert_eq!(d.update, UpdateSpec::default());
        assert_eq!(
            (
                d.update.policy.tries,
                d.update.policy.health_timeout_seconds
            ),
            (3, 900)
        );
        let d = parse(&format!(
            "{GOOD}update:\n  trustedKeys: [release.pub.pem]\n  tries: 5\n  healthTimeoutSeconds: 600\n"
        ))
        .unwrap();
        assert_eq!(
            d.update.trusted_keys,
            vec![dir.path().join("release.pub.pem")]
        );
        assert_eq!(
            (
                d.update.policy.tries,
                d.update.policy.health_timeout_seconds
            ),
            (5, 600)
        );

        for (tail, key, line, says) in [
            ("update:\n  tries: 0\n", "update.tries", 19, "1 to 10"),
            ("update:\n  tries: 11\n", "update.tries", 19, "1 to 10"),
            (
                "update:\n  healthTimeoutSeconds: 5\n",
                "update.healthTimeoutSeconds",
                19,
                "10 to 86400",
            ),
            (
                "update:\n  trustedKeys: [junk.pem]\n",
                "update.trustedKeys[0]",
                19,
                "openssl pkey",
            ),
            (
                "update:\n  trustedKeys:\n    - release.pub.pem\n    - base.tar\n",
                "update.trustedKeys[1]",
                21,
                "not an ed25519 public key",
            ),
            (
                "update:\n  trustedKeys: [missing.pem]\n",
                "update.trustedKeys[0]",
                19,
                "does not exist",
            ),
            (
                "update:\n  tries: 3\n  retries: 2\n",
                "retries",
                20,
                "unknown field",
            ),
            (
                "output:\n  formats: [raw, update]\n",
                "signing.key",
                19,
                "openssl genpkey -algorithm ed25519 -out KEY.pem",
            ),
        ] {
            let e = parse(&format!("{GOOD}{tail}")).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), (key, Some(line)), "{e}");
            assert!(e.message.contains(says), "{e}");
            assert!(e.to_string().starts_with("images/t.yaml:"), "{e}");
        }
        // With a signing key the update output is accepted.
        let d = parse(&format!(
            "{GOOD}signing:\n  key: base.tar\noutput:\n  formats: [update, raw]\n"
        ))
        .unwrap();
        assert_eq!(
            d.output.formats,
            vec![OutputFormat::Raw, OutputFormat::Update]
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse(&GOOD.replace("  fips: true\n", "  fips: true\n  fipz: 1\n")).unwrap_err();
        assert_eq!(e.key, "fipz");
        assert_eq!(e.line, Some(14));
        assert!(
            e.to_string()
                .starts_with("images/t.yaml:14: fipz: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_yaml11_boolean() {
        let e = parse(&GOOD.replace("fips: true", "fips: yes")).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        let e = parse(&GOOD.replace("selinux: permissive", "selinux: strict")).unwrap_err();
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = parse(&GOOD.replace("rootSize: 1GiB", "rootSize: 1GB")).unwrap_err();
        assert!(e.message.contains("binary units"), "{e}");
    }

    #[test]
    fn missing_files_and_bad_values() {
        let e = parse(&GOOD.replace("archive: base.tar", "archive: nope.tar")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("base.archive", Some(6)));
        assert!(e.message.contains("rke2-image base"), "{e}");
        let e = parse(&GOOD.replace("source: ov", "source: nodir")).unwrap_err();
        assert_eq!(e.key, "overlays[0].source");
        let e = parse(&GOOD.replace("\"0:0\"", "root:root")).unwrap_err();
        assert_eq!(e.key, "overlays[0].owner");
        let e = parse(&GOOD.replace("rootSize: 1GiB", "rootSize: 1000000")).unwrap_err();
        assert_eq!(e.key, "disk.rootSize");
        let e = parse(&GOOD.replace("name: node", "name: ../evil")).unwrap_err();
        assert_eq!(e.key, "name");
    }

    #[test]
    fn version_is_read_first() {
        let e = parse(
            &GOOD
                .replace("v1alpha1", "v9")
                .replace("fips: true", "future: x"),
        )
        .unwrap_err();
        assert_eq!(e.key, "apiVersion");
        assert!(e.message.contains("unsupported version"), "{e}");
        let e = parse("kind: Image\nname: x\n").unwrap_err();
        assert_eq!(e.key, "apiVersion");
    }

    #[test]
    fn relative_paths_are_folded() {
        assert_eq!(
            lexical_join(Path::new("images"), Path::new("../out")),
            PathBuf::from("out")
        );
        assert_eq!(
            lexical_join(Path::new("./images"), Path::new("./a/../b")),
            PathBuf::from("images/b")
        );
        assert_eq!(
            lexical_join(Path::new("images"), Path::new("../../x")),
            PathBuf::from("../x")
        );
        assert_eq!(
            lexical_join(Path::new("."), Path::new("..")),
            PathBuf::from("..")
        );
    }

    #[test]
    fn early_checks_name_line_and_key() {
        let cases: &[(&str, &str, &str, u64, &str)] = &[
            ("name: node", "name: Node", "name", 3, "lower-case"),
            (
                "version: 1.0.0",
                "version: 1.31.5+rke2r1",
                "version",
                4,
                "1.31.5-rke2r1",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: [1]",
                "disk.rootSize",
                17,
                "invalid type",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: -5",
                "disk.rootSize",
                17,
                "negative",
            ),
            (
                "    owner: \"0:0\"",
                "    owner: [1]",
                "overlays[0].owner",
                9,
                "string",
            ),
            (
                "    owner: \"0:0\"",
                "    owner: \"4294967296:0\"",
                "overlays[0].owner",
                9,
                "numeric",
            ),
            (
                "rootSize: 1GiB",
                "stateSize: 18446744073709551104",
                "disk.stateSize",
                17,
                "1MiB",
            ),
            (
                "rootSize: 1GiB",
                "stateSize: 128MiB",
                "disk.stateSize",
                17,
                "minimum",
            ),
            (
                "espSize: 128MiB",
                "espSize: 2TiB",
                "disk.espSize",
                16,
                "maximum",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 17TiB",
                "disk.rootSize",
                17,
                "maximum",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 1GiB\nepoch: 5000000000",
                "epoch",
                18,
                "2106",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 1GiB\ndescription: \"Node\\noptions selinux=0\"",
                "description",
                18,
                "control character",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 1GiB\nkernel:\n  cmdline: [console=ttyS0,115200]",
                "kernel.cmdline[1]",
                19,
                "[\"console=ttyS0,115200\"]",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 1GiB\nkernel:\n  cmdline:\n    - quiet\n    - '\"enforcing=0\"'",
                "kernel.cmdline[1]",
                21,
                "double quotes",
            ),
            (
                "rootSize: 1GiB",
                "rootSize: 1GiB\nkernel:\n  cmdline: [rke2.debug]",
                "kernel.cmdline[0]",
                19,
                "reserves",
            ),
        ];
        for (from, to, key, line, needle) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), (*key, Some(*line)), "{to}: {e}");
            assert!(e.message.contains(needle), "{to}: {e}");
        }
        let e =
            parse(&GOOD.replace("version: 1.0.0\n", "version: 1.0.0\nversion: 2\n")).unwrap_err();
        assert!(!e.message.contains("Options"), "{e}");
    }

    #[test]
    fn command_line_length_is_capped() {
        let long = format!(
            "rootSize: 1GiB\nkernel:\n  cmdline: [\"x={}\"]",
            "a".repeat(1900)
        );
        let e = parse(&GOOD.replace("rootSize: 1GiB", &long)).unwrap_err();
        assert_eq!(e.key, "kernel.cmdline");
        assert!(e.message.contains("2047"), "{e}");
        let fits = long.replace(&"a".repeat(1900), &"a".repeat(1700));
        parse(&GOOD.replace("rootSize: 1GiB", &fits)).unwrap();
    }

    #[test]
    fn key_paths_from_indentation() {
        let t = "a: 1\nb:\n  c:\n    - x: 1\n      y: 2\n    - x: 3\nd:\n- e: 1\n- e: 2\n";
        assert_eq!(key_at_line(t, 1), "a");
        assert_eq!(key_at_line(t, 4), "b.c[0].x");
        assert_eq!(key_at_line(t, 5), "b.c[0].y");
        assert_eq!(key_at_line(t, 6), "b.c[1].x");
        assert_eq!(key_at_line(t, 9), "d[1].e");
    }

    #[test]
    fn shipped_default_definition_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/default.yaml");
        let d = Definition::load(&file).unwrap();
        assert_eq!(d.cmdline, ["console=tty0", "console=ttyS0,115200"]);
        assert_eq!(d.source_len, std::fs::metadata(&file).unwrap().len());
    }

    #[test]
    fn duplicate_keys_rejected() {
        let e =
            parse(&GOOD.replace("version: 1.0.0\n", "version: 1.0.0\nversion: 2\n")).unwrap_err();
        assert!(e.message.to_lowercase().contains("duplicate"), "{e}");
    }
}
