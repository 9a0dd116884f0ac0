//! Checks a kernel configuration against the fragments in `kernel-config/`.
//!
//! A fragment is a plain kernel config file: `CONFIG_FOO=y` must be built in, `CONFIG_FOO=m`
//! may be built in or a module. Fragments whose file name ends in `.optional.config` only
//! produce warnings. The report distinguishes built-in, module and absent, so a failed build
//! lists exactly what the kernel lacks.

use crate::tree::Tree;
use std::fmt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{fragment} line {line}: {text:?} is not `CONFIG_NAME=y` or `CONFIG_NAME=m`")]
    Syntax {
        fragment: String,
        line: usize,
        text: String,
    },
    #[error("{0}: no kernel config fragments (*.config) found")]
    Empty(String),
    #[error("the base has no boot/config-<version>: install the kernel package's config, or skip the check with a kernel whose config is known")]
    NoConfig,
    #[error("reading {path} from the base: {reason}")]
    Read { path: String, reason: String },
}

/// What a fragment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Want {
    /// `=y`
    BuiltIn,
    /// `=m`: built in or module.
    Enabled,
}

/// What the kernel configuration has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Have {
    BuiltIn,
    Module,
    /// `# CONFIG_FOO is not set`, or not mentioned at all.
    Absent,
    /// Some other value (`=0`, a string); counts as absent for a tristate requirement.
    Other(String),
}

impl fmt::Display for Have {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Have::BuiltIn => f.write_str("built-in (=y)"),
            Have::Module => f.write_str("module (=m)"),
            Have::Absent => f.write_str("absent"),
            Have::Other(v) => write!(f, "={v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub option: String,
    pub want: Want,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// File name, e.g. `boot.config`.
    pub name: String,
    pub optional: bool,
    pub requirements: Vec<Requirement>,
}

/// Parses one fragment; `name` decides whether it is optional.
pub fn parse_fragment(name: &str, text: &str) -> Result<Fragment, KernelCheckError> {
    let mut requirements = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || KernelCheckError::Syntax {
            fragment: name.to_string(),
            line: i + 1,
            text: raw.to_string(),
        };
        let (opt, val) = line.split_once('=').ok_or_else(bad)?;
        let valid_name = opt.starts_with("CONFIG_")
            && opt.len() > 7
            && opt[7..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        let want = match val {
            "y" => Want::BuiltIn,
            "m" => Want::Enabled,
            _ => return Err(bad()),
        };
        if !valid_name {
            return Err(bad());
        }
        requirements.push(Requirement {
            option: opt.to_string(),
            want,
        });
    }
    Ok(Fragment {
        name: name.to_string(),
        optional: name.ends_with(".optional.config"),
        requirements,
    })
}

/// Loads every `*.config` fragment in `dir`, sorted by file name.
pub fn load_fragments(dir: &Path) -> Result<Vec<Fragment>, KernelCheckError> {
    let io = |source| KernelCheckError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "config") && p.is_file())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(KernelCheckError::Empty(dir.display().to_string()));
    }
    names
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|source| KernelCheckError::Io {
                path: p.display().to_string(),
                source,
            })?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parse_fragment(&name, &text)
        })
        .collect()
}

/// One requirement and what the kernel has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub fragment: String,
    pub option: String,
    pub want: Want,
    pub have: Have,
    pub optional: bool,
}

impl Finding {
    pub fn met(&self) -> bool {
        matches!(
            (self.want, &self.have),
            (_, Have::BuiltIn) | (Want::Enabled, Have::Module)
        )
    }
}

/// Result of [`check`]: every requirement with what the kernel has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Unmet requirements of non-optional fragments: these fail the build.
    pub fn missing(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| !f.optional && !f.met())
            .collect()
    }
    /// Unmet requirements of optional fragments.
    pub fn warnings(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.optional && !f.met())
            .collect()
    }
    pub fn is_ok(&self) -> bool {
        self.missing().is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing = self.missing();
        let warnings = self.warnings();
        writeln!(
            f,
            "kernel config: {} options checked, {} missing, {} optional missing",
            self.findings.len(),
            missing.len(),
            warnings.len()
        )?;
        for (label, list) in [("missing", missing), ("optional", warnings)] {
            for x in list {
                let want = match x.want {
                    Want::BuiltIn => "built-in (=y)",
                    Want::Enabled => "built-in or module (=y/=m)",
                };
                writeln!(
                    f,
                    "  {label}: {}: needs {want}, kernel has {} [{}]",
                    x.option, x.have, x.fragment
                )?;
            }
        }
        Ok(())
    }
}

/// What `config_text` (a kernel `.config`) sets `option` to.
pub fn lookup(config_text: &str, option: &str) -> Have {
    let mut have = Have::Absent;
    for line in config_text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix(option).and_then(|r| r.strip_prefix('=')) {
            have = match v {
                "y" => Have::BuiltIn,
                "m" => Have::Module,
                other => Have::Other(other.trim_matches('"').to_string()),
            };
        } else if line == format!("# {option} is not set") {
            have = Have::Absent;
        }
    }
    have
}

/// Checks `config_text` against the fragments.
/// The fragments of the repository's `kernel-config/`, compiled into the binary so a build
/// host needs no checkout to run the check.
pub fn builtin_fragments() -> Result<Vec<Fragment>, KernelCheckError> {
    const FRAGMENTS: [(&str, &str); 4] = [
        (
            "boot.config",
            include_str!("../../kernel-config/boot.config"),
        ),
        (
            "security.config",
            include_str!("../../kernel-config/security.config"),
        ),
        (
            "rke2.config",
            include_str!("../../kernel-config/rke2.config"),
        ),
        (
            "ipvs.optional.config",
            include_str!("../../kernel-config/ipvs.optional.config"),
        ),
    ];
    FRAGMENTS
        .iter()
        .map(|(name, text)| parse_fragment(name, text))
        .collect()
}

pub fn check(config_text: &str, required: &[Fragment]) -> Report {
    let mut values = std::collections::BTreeMap::new();
    for line in config_text.lines() {
        if let Some((k, _)) = line.trim().split_once('=') {
            if k.starts_with("CONFIG_") {
                values.insert(k.to_string(), ());
            }
        }
    }
    let findings = required
        .iter()
        .flat_map(|frag| {
            frag.requirements.iter().map(|r| Finding {
                fragment: frag.name.clone(),
                option: r.option.clone(),
                want: r.want,
                have: if values.contains_key(&r.option) {
                    lookup(config_text, &r.option)
                } else {
                    Have::Absent
                },
                optional: frag.optional,
            })
        })
        .collect();
    Report { findings }
}

/// The kernel config of the (newest) kernel in a root tree: `(version, text)` from
/// `boot/config-<version>`.
pub fn config_from_tree(tree: &Tree) -> Result<(String, String), KernelCheckError> {
    let mut versions: Vec<String> = tree
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(b"boot/config-".as_slice()))
        .filter(|v| !v.contains(&b'/'))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    versions.sort_by_key(|v| version_key(v));
    let v = versions.pop().ok_or(KernelCheckError::NoConfig)?;
    let path = format!("boot/config-{v}");
    let bytes = tree
        .read_file(path.as_bytes())
        .map_err(|e| KernelCheckError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok((v, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Orders `6.1.0-10-amd64` before `6.1.0-9-amd64` correctly (numbers compared as numbers).
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-'])
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Blob, Inode, Kind};

    const CFG: &str = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n";

    #[test]
    fn distinguishes_builtin_module_absent() {
        let f = parse_fragment(
            "boot.config",
            "# c\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_B=m\nCONFIG_C=m\nCONFIG_E=m\nCONFIG_D=m\n",
        )
        .unwrap();
        let r = check(CFG, &[f]);
        let got: Vec<(&str, bool, String)> = r
            .findings
            .iter()
            .map(|f| (f.option.as_str(), f.met(), f.have.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("CONFIG_A", true, "built-in (=y)".to_string()),
                ("CONFIG_B", false, "module (=m)".to_string()),
                ("CONFIG_B", true, "module (=m)".to_string()),
                ("CONFIG_C", false, "absent".to_string()),
                ("CONFIG_E", false, "absent".to_string()),
                ("CONFIG_D", false, "=x".to_string()),
            ]
        );
        assert!(!r.is_ok());
        let text = r.to_string();
        assert!(
            text.contains(
                "missing: CONFIG_B: needs built-in (=y), kernel has module (=m) [boot.config]"
            ),
            "{text}"
        );
        assert!(
            text.contains("missing: CONFIG_C: needs built-in or module (=y/=m), kernel has absent"),
            "{text}"
        );
    }

    #[test]
    fn optional_fragments_only_warn() {
        let f = parse_fragment("ipvs.optional.config", "CONFIG_Z=m\n").unwrap();
        let r = check(CFG, &[f]);
        assert!(r.is_ok());
        assert_eq!(r.warnings().len(), 1);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse_fragment("x.config", "CONFIG_A=y\nCONFIG_B=n\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.config line 2: \"CONFIG_B=n\" is not `CONFIG_NAME=y` or `CONFIG_NAME=m`"
        );
        assert!(parse_fragment("x.config", "FOO=y").is_err());
    }

    #[test]
    fn config_from_tree_picks_newest_kernel() {
        let mut t = Tree::new(0);
        for (v, body) in [
            ("6.1.0-9-amd64", "CONFIG_OLD=y\n"),
            ("6.1.0-10-amd64", "CONFIG_NEW=y\n"),
        ] {
            let ino = Inode::new(
                Kind::File(Blob::bytes(body.as_bytes().to_vec())),
                0o644,
                0,
                0,
                0,
            );
            t.insert(format!("boot/config-{v}").as_bytes(), ino)
                .unwrap();
        }
        let (v, text) = config_from_tree(&t).unwrap();
        assert_eq!(v, "6.1.0-10-amd64");
        assert_eq!(text, "CONFIG_NEW=y\n");
        assert!(matches!(
            config_from_tree(&Tree::new(0)),
            Err(KernelCheckError::NoConfig)
        ));
    }
}
