//! Ignition configurations. The version is read first; only spec 3.x is understood.

pub mod v3;

use crate::plan::Plan;

/// Newest 3.x minor version whose keys we know; newer minors parse, with unknown keys reported.
pub const NEWEST_KNOWN_MINOR: u64 = 5;

pub fn parse(text: &str) -> Result<Plan, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let version = v
        .get("ignition")
        .and_then(|i| i.get("version"))
        .and_then(|v| v.as_str())
        .ok_or(
            "ignition.version is missing; it must be the first thing an Ignition config declares",
        )?;
    let mut parts = version.split(['.', '-']);
    let major: u64 = parts
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("ignition.version {version:?} is not a version number"))?;
    let minor: u64 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    match major {
        3 => {
            let mut plan = v3::parse(&v)?;
            if minor > NEWEST_KNOWN_MINOR {
                plan.warnings.push(format!(
                    "ignition.version {version}: newer than 3.{NEWEST_KNOWN_MINOR}, the newest \
                     spec this agent knows; keys it does not know are reported"
                ));
            }
            Ok(plan)
        }
        _ => Err(format!(
            "ignition.version {version}: only Ignition spec 3.x is supported (spec 2.x configs can \
             be translated with ignition-config-transpiler or Butane)"
        )),
    }
}
