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
/// Definitions are small; anything larger is a mistake or an attack.
const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;

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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
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
    description: Option<String>,
    #[serde(default)]
    epoch: Option<u64>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBase {
    #[serde(default)]
    archive: Option<Spanned<String>>,
    #[serde(default)]
    debian: Option<RawDebian>,
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
    cmdline: Vec<String>,
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
}

fn default_output() -> String {
    "../out".into()
}

impl Default for RawOutput {
    fn default() -> Self {
        RawOutput {
            directory: default_output(),
        }
    }
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
    pub rke2: Option<crate::payload::Rke2Spec>,
    pub esp_size: u64,
    pub root_size: u64,
    pub state_size: u64,
    pub init: Option<PathBuf>,
    pub extra_modules: Vec<String>,
    pub output_dir: PathBuf,
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
        let meta = std::fs::metadata(file)
            .map_err(|e| err(None, "", format!("cannot read the definition: {e}")))?;
        if meta.len() > MAX_DEFINITION_BYTES {
            return Err(err(
                None,
                "",
                format!(
                    "definition is {} bytes; the limit is {MAX_DEFINITION_BYTES}",
                    meta.len()
                ),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| err(None, "", format!("cannot read the definition: {e}")))?;
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
                err(line, "", format!("not a valid YAML definition: {msg}"))
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
                err(line, &key, format!("{msg}{hint}"))
            })?;

        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                lexical_join(dir, p)
            }
        };

        let name = raw.name.value.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(err(
                line_of(&raw.name.referenced),
                "name",
                format!("{name:?} is not a valid image name: use letters, digits, '-', '_' and '.' (it becomes a file name)"),
            ));
        }
        let version = raw.version.value.clone();
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        {
            return Err(err(
                line_of(&raw.version.referenced),
                "version",
                format!("{version:?} is not a valid version: use letters, digits, '.', '-', '_' and '+'"),
            ));
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
                            "{} does not exist or is not a file (resolved to {}); build one with `rke2-image base` or fix the path",
                            a.value,
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

        for (key, s) in [
            ("disk.espSize", &raw.disk.esp_size),
            ("disk.rootSize", &raw.disk.root_size),
        ] {
            if s.value.0 == 0 || s.value.0 % MIB != 0 {
                return Err(err(
                    line_of(&s.referenced),
                    key,
                    format!("{} bytes is not a positive multiple of 1 MiB (partitions are 1 MiB aligned)", s.value.0),
                ));
            }
        }
        if raw.disk.state_size.value.0 < 256 * MIB {
            return Err(err(
                line_of(&raw.disk.state_size.referenced),
                "disk.stateSize",
                "must be at least 256MiB (rke2-init needs that much to create the state partition)"
                    .into(),
            ));
        }
        if raw.disk.esp_size.value.0 < 64 * MIB {
            return Err(err(
                line_of(&raw.disk.esp_size.referenced),
                "disk.espSize",
                "must be at least 64MiB (FAT32 needs 65525 clusters; firmware expects FAT32)"
                    .into(),
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
                            "{} does not exist (resolved to {})",
                            p.value,
                            path.display()
                        ),
                    ));
                }
                Some(path)
            }
        };
        for (i, c) in raw.kernel.cmdline.iter().enumerate() {
            if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(err(
                    None,
                    &format!("kernel.cmdline[{i}]"),
                    format!("{c:?}: one parameter per list item, without spaces"),
                ));
            }
        }

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

        Ok(Definition {
            file: file.to_path_buf(),
            name,
            version,
            description: raw.description,
            epoch: raw.epoch,
            base,
            overlays,
            kernel_version: raw.kernel.version,
            cmdline: raw.kernel.cmdline,
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
            esp_size: raw.disk.esp_size.value.0,
            root_size: raw.disk.root_size.value.0,
            state_size: raw.disk.state_size.value.0,
            init,
            extra_modules: raw.initrd.modules,
            output_dir: resolve(&raw.output.directory),
        })
    }
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
    fn duplicate_keys_rejected() {
        let e =
            parse(&GOOD.replace("version: 1.0.0\n", "version: 1.0.0\nversion: 2\n")).unwrap_err();
        assert!(e.message.to_lowercase().contains("duplicate"), "{e}");
    }
}
