//! Ignition configurations. The version is read first; only spec 3.x is understood.

pub mod v3;

use crate::plan::Plan;

/// The spec versions Ignition accepts, exactly (coreos/ignition `config/v3_*`; 3.6.0 is stable
/// since Ignition 2.26, 3.7.0-experimental is not accepted here).
pub const VERSIONS: [&str; 7] = [
    "3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0", "3.6.0",
];

pub fn parse(text: &str) -> Result<Plan, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "not valid JSON at line {}, column {}; check the syntax there",
            e.line(),
            e.column()
        )
    })?;
    let version = v
        .get("ignition")
        .and_then(|i| i.get("version"))
        .and_then(|v| v.as_str())
        .ok_or(
            "ignition.version is missing; it must be the first thing an Ignition config declares",
        )?;
    match VERSIONS.iter().position(|k| *k == version) {
        Some(minor) => v3::parse(&v, minor as u32),
        None if version.starts_with('1') || version.starts_with("2.") => Err(format!(
            "ignition.version: {version:?}: only Ignition spec 3.x is supported (spec 2.x configs \
             can be translated with ignition-config-transpiler or Butane)"
        )),
        None if version.contains("experimental") => Err(format!(
            "ignition.version: {version:?}: experimental specs are not accepted; use 3.6.0"
        )),
        None => Err(format!(
            "ignition.version: {version:?} is not a spec version Ignition knows; use one of {}",
            VERSIONS.join(", ")
        )),
    }
}
