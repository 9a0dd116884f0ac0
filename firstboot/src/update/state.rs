//! The node's update record, `/var/lib/rke2-image/update/state.json` (on the state partition,
//! so it survives both slots), replaced atomically on every change.
//!
//! ```json
//! {
//!   "last": {"fromSlot": "a", "fromVersion": "1.0.0", "toSlot": "b", "toVersion": "1.1.0",
//!            "result": "pending", "reason": "", "tries": 3},
//!   "health": {"b": {"version": "1.1.0", "healthy": false, "counted": true,
//!                    "reason": "rke2-server.service failed (exit-code)"}}
//! }
//! ```
//! `result`: `writing` (apply under way; found on a later boot it becomes `interrupted`),
//! `failed` (apply stopped; `reason` says why), `pending` (written, boots next), `good` (the new
//! slot passed its health check), `rolled-back` (by the operator, or because the new slot failed
//! its tries; `reason` says which), `interrupted`. `health` holds the last health report of
//! each slot. `fromVersion`/`toVersion` let a future release migrate state.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::{Attrs, Root};

/// The file in the state directory.
pub const FILE: &str = "state.json";
/// The state directory on a node.
pub const DIR: &str = "var/lib/rke2-image/update";

pub const WRITING: &str = "writing";
pub const FAILED: &str = "failed";
pub const PENDING: &str = "pending";
pub const GOOD: &str = "good";
pub const ROLLED_BACK: &str = "rolled-back";
pub const INTERRUPTED: &str = "interrupted";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    #[serde(default)]
    pub last: Option<Record>,
    #[serde(default)]
    pub health: BTreeMap<String, HealthReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub from_slot: String,
    pub from_version: String,
    pub to_slot: String,
    pub to_version: String,
    pub result: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub tries: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub version: String,
    pub healthy: bool,
    /// Whether the boot was counted (a failure then reboots into the next try).
    pub counted: bool,
    #[serde(default)]
    pub reason: String,
}

/// Reads the record in `dir` (empty when there is none yet).
pub fn load(dir: &Path) -> Result<State, String> {
    let p = dir.join(FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            format!(
                "{}: {e} (remove the file to start a fresh update record)",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("reading {}: {e}", p.display())),
    }
}

/// Replaces the record in `dir` atomically (temp file, fsync, rename, fsync dir).
pub fn save(dir: &Path, s: &State) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(s).map_err(|e| e.to_string())?;
    text.push('\n');
    let root = Root::new(dir);
    root.write(FILE, text.as_bytes(), Attrs::root(0o644))
        .and_then(|()| root.flush())
        .map_err(|e| format!("writing {}: {e}", dir.join(FILE).display()))
}

/// Loads, changes and saves the record.
pub fn update(dir: &Path, f: impl FnOnce(&mut State)) -> Result<State, String> {
    let mut s = load(dir)?;
    f(&mut s);
    save(dir, &s)?;
    Ok(s)
}
