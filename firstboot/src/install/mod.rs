//! Installing the image onto a disk (issue 11 §3), as libraries over inputs passed in.
//!
//! The steps of an install, in order:
//!
//! 1. **What to install where** (here): the request comes from the node configuration's
//!    `install:` section and/or the kernel command line ([`request`]; precedence below).
//! 2. **Which disk** ([`target`]): candidates from sysfs and `/dev`, each checked against the
//!    refusals (boot medium, multipath path, mounted, in use, read-only, existing data without
//!    `wipe`, size range, removable for `auto`); exactly one disk or a stop with one message.
//! 3. **Write and verify** ([`write`]): the raw image's GPT (resized), ESP, root-a and
//!    root-a-verity onto the chosen disk, verified through dm-verity with the running image's
//!    root hash; then the edge (`rke2-firstboot run`, `main.rs`) adds a UEFI boot entry and
//!    reboots or powers off as [`Then`] says. [`target::select`] is re-run immediately before
//!    writing (in `main.rs`), so a disk that changed since the operator's request is refused.
//!
//! Where it hooks in: `agent::run` with `RunEnv::live_cmdline` set (a live boot, `rke2.root=iso`)
//! returns [`crate::agent::RunOutcome::Install`] when a request exists, before anything is
//! rendered: a node being installed never configures or starts RKE2 in the live system. A
//! node booted from its disk has no `live_cmdline`, so the same configuration's `install:`
//! section is ignored there.
//!
//! Precedence: the kernel command line overrides the configuration key by key. A
//! `rke2.install=<spec>` replaces `install.target`, `rke2.install.wipe=0|1` replaces
//! `install.wipe`; the size range and `then` come from the configuration only. A command line
//! is set for one machine or one boot entry (a PXE entry, the ISO's install entry), so it is
//! more specific than a cluster-wide configuration file. A bare `rke2.install` (no value) asks
//! for an install with the configuration's target: that is the form a generic boot entry uses,
//! so it never overrides a disk the configuration names. With neither, nothing is installed.

pub mod efi;
pub mod run;
pub mod target;
pub mod write;

use rke2_image_contract::cmdline;
use serde::Deserialize;

/// How the install target is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A path under `/dev`: `/dev/vda`, `/dev/disk/by-id/...`, `/dev/mapper/...`.
    Path(String),
    /// `wwn:<wwn>`: the disk's World Wide Name (`wwid` in sysfs, `wwn-` links in by-id).
    Wwn(String),
    /// `serial:<serial>`: the disk's serial number.
    Serial(String),
    /// `auto`: the only non-removable disk with no partitions and no signature, in range.
    Auto,
}

impl TargetSpec {
    /// Parses a spec as written in `install.target` or `rke2.install=`. `key` names where it
    /// came from (for the message).
    pub fn parse(key: &str, s: &str) -> Result<TargetSpec, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "{key}: {s:?} does not name a disk; use a path such as /dev/vda or \
                 /dev/disk/by-id/<id>, wwn:<wwn>, serial:<serial>, or auto"
            )
        };
        if s == "auto" {
            Ok(TargetSpec::Auto)
        } else if let Some(w) = s.strip_prefix("wwn:") {
            (!w.is_empty())
                .then(|| TargetSpec::Wwn(w.to_string()))
                .ok_or_else(bad)
        } else if let Some(w) = s.strip_prefix("serial:") {
            (!w.is_empty())
                .then(|| TargetSpec::Serial(w.to_string()))
                .ok_or_else(bad)
        } else if s.starts_with("/dev/") && s.len() > 5 && !s.split('/').any(|c| c == "..") {
            Ok(TargetSpec::Path(s.to_string()))
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Path(p) => f.write_str(p),
            TargetSpec::Wwn(w) => write!(f, "wwn:{w}"),
            TargetSpec::Serial(s) => write!(f, "serial:{s}"),
            TargetSpec::Auto => f.write_str("auto"),
        }
    }
}

/// What the node does once the image is written and verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Then {
    #[default]
    Reboot,
    Poweroff,
}

/// The `install:` section of the native node configuration (top level, or `nodes[].install`
/// for one machine of a cluster configuration, which replaces the top-level one whole).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstallSection {
    /// Target spec (see [`TargetSpec`]); may be left to `rke2.install=` on the command line.
    #[serde(default)]
    pub target: Option<String>,
    /// Overwrite a disk that has partitions or filesystem signatures.
    #[serde(default)]
    pub wipe: bool,
    /// Smallest acceptable disk, e.g. `8GiB`.
    #[serde(default)]
    pub min_size: Option<String>,
    /// Largest acceptable disk, e.g. `2TiB`.
    #[serde(default)]
    pub max_size: Option<String>,
    #[serde(default)]
    pub then: Then,
}

/// Checks an `install:` section (at key path `key`) without resolving anything.
pub fn check_section(key: &str, s: &InstallSection) -> Result<(), String> {
    if let Some(t) = &s.target {
        TargetSpec::parse(&format!("{key}.target"), t)?;
    }
    let min = parse_opt_size(&format!("{key}.min-size"), s.min_size.as_deref())?;
    let max = parse_opt_size(&format!("{key}.max-size"), s.max_size.as_deref())?;
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            return Err(format!(
                "{key}: min-size {} is larger than max-size {}; swap them or widen the range",
                human(a),
                human(b)
            ));
        }
    }
    Ok(())
}

fn parse_opt_size(key: &str, s: Option<&str>) -> Result<Option<u64>, String> {
    s.map(|s| parse_size(s).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// A resolved install request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRequest {
    pub target: TargetSpec,
    /// Where the target came from (`install.target`, `rke2.install`), for messages.
    pub target_key: String,
    pub wipe: bool,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub then: Then,
}

/// The install request from the configuration's section (already chosen for this machine, key
/// path `key`) and the kernel command line, with the precedence documented on this module.
/// `Ok(None)`: no install asked for.
pub fn request(
    key: &str,
    section: Option<&InstallSection>,
    cmdline_text: &str,
) -> Result<Option<InstallRequest>, String> {
    let cl_target = cmdline::get(cmdline_text, cmdline::INSTALL);
    let cl_wipe = match cmdline::get(cmdline_text, cmdline::INSTALL_WIPE) {
        None => None,
        Some("1") | Some("") => Some(true),
        Some("0") => Some(false),
        Some(v) => {
            return Err(format!(
                "kernel command line: {}={v:?}: use 1 (wipe) or 0",
                cmdline::INSTALL_WIPE
            ))
        }
    };
    let default = InstallSection::default();
    let s = section.unwrap_or(&default);
    if section.is_some() {
        check_section(key, s)?;
    }
    // A bare `rke2.install` (the ISO's install entry) asks for an install without naming a
    // target, so a generic boot entry never overrides a configuration's chosen disk.
    let cl_target = cl_target.map(str::trim);
    let (spec, target_key) = match (cl_target, &s.target) {
        (Some(t), _) if !t.is_empty() => (
            t.to_string(),
            format!("kernel command line {}", cmdline::INSTALL),
        ),
        (_, Some(t)) => (t.clone(), format!("{key}.target")),
        (None, None) if section.is_none() => return Ok(None),
        (_, None) => {
            return Err(format!(
                "{key}: no target; set {key}.target (a /dev path, /dev/disk/by-id/<id>, \
                 wwn:<wwn>, serial:<serial> or auto) or boot with {}=<target>",
                cmdline::INSTALL
            ))
        }
    };
    Ok(Some(InstallRequest {
        target: TargetSpec::parse(&target_key, &spec)?,
        target_key,
        wipe: cl_wipe.unwrap_or(s.wipe),
        min_size: parse_opt_size(&format!("{key}.min-size"), s.min_size.as_deref())?,
        max_size: parse_opt_size(&format!("{key}.max-size"), s.max_size.as_deref())?,
        then: s.then,
    }))
}

/// Parses `8GiB`, `512MiB`, `1TiB`, `4096` (bytes): binary units only, as the image
/// definition's sizes (builder `definition::parse_size`), so one spelling works everywhere.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => 0,
    };
    let n: Option<u64> = num.parse().ok();
    match n.and_then(|n| n.checked_mul(mult)).filter(|_| mult != 0) {
        Some(v) => Ok(v),
        None => Err(format!(
            "{s:?} is not a size; write a whole number with a binary unit (B, KiB, MiB, GiB, \
             TiB), e.g. 8GiB or 512MiB"
        )),
    }
}

/// Bytes as an operator reads them: `20 GiB`, `7.5 GiB`, `512 MiB`, `0 B`.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while i + 1 < UNITS.len() && b >= 1u64 << (10 * (i + 1)) {
        i += 1;
    }
    let unit = 1u64 << (10 * i);
    if b.is_multiple_of(unit) {
        format!("{} {}", b / unit, UNITS[i])
    } else {
        // One decimal, rounded down: deterministic integer arithmetic.
        let tenths = (b as u128 * 10 / unit as u128) as u64;
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_forms() {
        let p = |s| TargetSpec::parse("install.target", s);
        assert_eq!(p("/dev/vda"), Ok(TargetSpec::Path("/dev/vda".into())));
        assert_eq!(
            p("/dev/disk/by-id/virtio-abc"),
            Ok(TargetSpec::Path("/dev/disk/by-id/virtio-abc".into()))
        );
        assert_eq!(p("wwn:0x5000c5"), Ok(TargetSpec::Wwn("0x5000c5".into())));
        assert_eq!(p("serial:S1"), Ok(TargetSpec::Serial("S1".into())));
        assert_eq!(p(" auto "), Ok(TargetSpec::Auto));
        for bad in [
            "vda",
            "/dev/",
            "serial:",
            "wwn:",
            "/dev/../etc/passwd",
            "first",
            "",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.starts_with("install.target: "), "{e}");
            assert!(e.contains("/dev/disk/by-id/<id>"), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        for bad in ["8G", "500GB", "GiB", "-1GiB", "1.5GiB", "99999999999TiB"] {
            assert!(parse_size(bad).unwrap_err().contains("8GiB"), "{bad}");
        }
        assert_eq!(human(20 << 30), "20 GiB");
        assert_eq!(human((15 << 29) + 1), "7.5 GiB");
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1000), "1000 B");
    }

    fn section(yaml: &str) -> InstallSection {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn precedence_command_line_over_config() {
        let s = section("target: serial:A\nwipe: false\nmin-size: 8GiB\nthen: poweroff\n");
        let r = request("install", Some(&s), "quiet").unwrap().unwrap();
        assert_eq!(r.target, TargetSpec::Serial("A".into()));
        assert_eq!(r.target_key, "install.target");
        assert!(!r.wipe);
        assert_eq!((r.min_size, r.then), (Some(8 << 30), Then::Poweroff));

        let r = request(
            "install",
            Some(&s),
            "rke2.install=/dev/disk/by-id/x rke2.install.wipe=1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.target, TargetSpec::Path("/dev/disk/by-id/x".into()));
        assert_eq!(r.target_key, "kernel command line rke2.install");
        assert!(r.wipe);
        // The size range and `then` still come from the configuration.
        assert_eq!((r.min_size, r.then), (Some(8 << 30), Then::Poweroff));

        let w = section("target: auto\nwipe: true\n");
        let r = request("install", Some(&w), "rke2.install.wipe=0")
            .unwrap()
            .unwrap();
        assert!(!r.wipe);

        // Command line alone: defaults for the rest.
        let r = request("install", None, "rke2.install=auto")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.target, r.wipe, r.min_size, r.then),
            (TargetSpec::Auto, false, None, Then::Reboot)
        );
        assert_eq!(
            request("install", None, "quiet rke2.install.wipe=1"),
            Ok(None)
        );

        // Bare rke2.install: install, with the configuration's target.
        let r = request("install", Some(&s), "rke2.install")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.target, r.target_key.as_str()),
            (TargetSpec::Serial("A".into()), "install.target")
        );
        let e = request("install", None, "rke2.install").unwrap_err();
        assert!(e.contains("install: no target; set install.target"), "{e}");
        assert!(e.contains("or boot with rke2.install=<target>"), "{e}");
    }

    #[test]
    fn request_errors_name_key_and_fix() {
        let e = request("install", None, "rke2.install.wipe=yes").unwrap_err();
        assert!(
            e.contains("rke2.install.wipe") && e.contains("use 1"),
            "{e}"
        );
        let e = request("install", None, "rke2.install=sda").unwrap_err();
        assert!(
            e.starts_with("kernel command line rke2.install: \"sda\""),
            "{e}"
        );
        let e = request("nodes[2].install", Some(&section("wipe: true\n")), "").unwrap_err();
        assert!(e.contains("set nodes[2].install.target"), "{e}");
        let e = request(
            "install",
            Some(&section("target: auto\nmin-size: 2TiB\nmax-size: 8GiB\n")),
            "",
        )
        .unwrap_err();
        assert!(
            e.contains("min-size 2 TiB is larger than max-size 8 GiB"),
            "{e}"
        );
        let e = check_section("install", &section("target: auto\nmax-size: big\n")).unwrap_err();
        assert!(e.starts_with("install.max-size: \"big\""), "{e}");
        assert!(serde_saphyr::from_str::<InstallSection>("taget: auto\n").is_err());
    }

    fn native(body: &str) -> Result<crate::plan::Plan, String> {
        let text = format!("apiVersion: rke2-image/v1\nkind: NodeConfig\n{body}");
        crate::dialects::parse("/run/config/node.yaml", text.as_bytes(), None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn native_configuration_install_section() {
        let plan = native(
            "hostname: n1\ninstall:\n  target: /dev/disk/by-id/virtio-S1\n  wipe: true\n  \
             min-size: 8GiB\n  max-size: 2TiB\n  then: poweroff\n",
        )
        .unwrap();
        let cfg = plan.rke2.unwrap();
        let (key, s) = cfg.install_for(Some("n1"));
        let r = request(&key, s, "").unwrap().unwrap();
        assert_eq!(key, "install");
        assert_eq!(
            r.target,
            TargetSpec::Path("/dev/disk/by-id/virtio-S1".into())
        );
        assert_eq!(
            (r.wipe, r.min_size, r.max_size, r.then),
            (true, Some(8 << 30), Some(2 << 40), Then::Poweroff)
        );

        // Errors name the file, the key and the fix.
        let e = native("install:\n  target: sdb\n").unwrap_err();
        assert!(
            e.starts_with(
                "/run/config/node.yaml: native: install.target: \"sdb\" does not name a disk"
            ),
            "{e}"
        );
        let e = native("install:\n  target: auto\n  min-size: 8G\n").unwrap_err();
        assert!(
            e.contains("install.min-size: \"8G\" is not a size; write"),
            "{e}"
        );
        let e = native("install:\n  target: auto\n  then: halt\n").unwrap_err();
        assert!(e.starts_with("/run/config/node.yaml: native: "), "{e}");
        assert!(e.contains("halt"), "{e}");
        let e = native("install:\n  target: auto\n  minSize: 8GiB\n").unwrap_err();
        assert!(e.contains("unknown key `minSize`"), "{e}");
    }

    #[test]
    fn per_node_install_replaces_the_top_level_one() {
        let plan = native(
            "cluster:\n  token: t\ninstall:\n  target: auto\n  min-size: 8GiB\nnodes:\n  \
             - hostname: cp-1\n    match: { mac: \"52:54:00:00:00:01\" }\n    role: server\n    \
             initializer: true\n    install:\n      target: serial:CP1\n  \
             - hostname: w-1\n    match: { mac: \"52:54:00:00:00:02\" }\n    role: agent\n",
        )
        .unwrap();
        let cfg = plan.rke2.unwrap();
        let (key, s) = cfg.install_for(Some("cp-1"));
        let r = request(&key, s, "").unwrap().unwrap();
        assert_eq!(
            (key.as_str(), &r.target),
            ("nodes[0].install", &TargetSpec::Serial("CP1".into()))
        );
        assert_eq!(r.min_size, None, "replaced whole, not merged");
        let (key, s) = cfg.install_for(Some("w-1"));
        let r = request(&key, s, "").unwrap().unwrap();
        assert_eq!(
            (key.as_str(), &r.target, r.min_size),
            ("install", &TargetSpec::Auto, Some(8 << 30))
        );
        let e = native(
            "cluster:\n  token: t\nnodes:\n  - hostname: cp-1\n    match: { mac: \"52:54:00:00:00:01\" }\n    \
             role: server\n    install:\n      target: auto\n      max-size: 1MiB\n      min-size: 2MiB\n",
        )
        .unwrap_err();
        assert!(
            e.contains("nodes[0].install: min-size 2 MiB is larger than max-size 1 MiB"),
            "{e}"
        );
    }
}
