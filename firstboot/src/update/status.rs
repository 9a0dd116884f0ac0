//! `rke2-update status [--json]`.
//!
//! JSON (`--json`, stable, camelCase):
//! ```json
//! {
//!   "image": "rke2-node", "source": "disk",
//!   "running": {"slot": "a", "version": "1.0.0"},
//!   "slots": [
//!     {"slot": "a", "version": "1.0.0", "state": "good", "triesLeft": null, "entry": "rke2-node-1.0.0-a.efi", "running": true},
//!     {"slot": "b", "version": "1.1.0", "state": "pending", "triesLeft": 3, "entry": "rke2-node-1.1.0-b+3.efi", "running": false}
//!   ],
//!   "last": {"fromSlot": "a", "fromVersion": "1.0.0", "toSlot": "b", "toVersion": "1.1.0", "result": "pending", "reason": "", "tries": 3},
//!   "health": {"a": {"version": "1.0.0", "healthy": true, "counted": false, "reason": ""}}
//! }
//! ```
//! `state` of a slot: `empty` (no entry; `version`/`entry` empty), `pending` (`triesLeft` > 0),
//! `good`, `bad` (no tries left). `last` is null before the first update.

use std::collections::BTreeMap;

use rke2_image_contract::update::EntryState;
use serde::Serialize;

use super::{esp, running_slot, state, Roots};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub image: String,
    pub source: String,
    pub running: Running,
    pub slots: Vec<Slot>,
    pub last: Option<state::Record>,
    pub health: BTreeMap<String, state::HealthReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub slot: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub slot: String,
    pub version: String,
    pub state: String,
    pub tries_left: Option<u32>,
    pub entry: String,
    pub running: bool,
}

pub fn state_name(s: Option<EntryState>) -> &'static str {
    match s {
        None => "empty",
        Some(EntryState::Good) => "good",
        Some(EntryState::Pending(_)) => "pending",
        Some(EntryState::Bad) => "bad",
    }
}

pub fn status(roots: &Roots) -> Result<Status, String> {
    let b = roots.boot_info()?;
    let ii = roots.image_info()?;
    let st = state::load(&roots.state)?;
    let slot = running_slot(&b)?;
    let entries = if b.source == "disk" {
        esp::list(&roots.esp, &ii.name)?
    } else {
        Vec::new()
    };
    let mut slots = Vec::new();
    for s in ['a', 'b'] {
        let e = esp::of_slot(&entries, s);
        slots.push(Slot {
            slot: s.to_string(),
            version: e.map(|e| e.version.clone()).unwrap_or_default(),
            state: state_name(e.map(|e| e.state())).to_string(),
            tries_left: e.and_then(|e| match e.state() {
                EntryState::Pending(n) => Some(n),
                _ => None,
            }),
            entry: e.map(|e| e.file_name()).unwrap_or_default(),
            running: s == slot,
        });
    }
    Ok(Status {
        image: ii.name,
        source: b.source,
        running: Running {
            slot: slot.to_string(),
            version: ii.version,
        },
        slots,
        last: st.last,
        health: st.health,
    })
}

/// A few aligned lines.
pub fn human(s: &Status) -> String {
    let mut out = format!(
        "{:<9} {} {} (slot {}, {} boot)\n",
        "running:", s.image, s.running.version, s.running.slot, s.source
    );
    for sl in &s.slots {
        let state = match (sl.state.as_str(), sl.tries_left) {
            ("pending", Some(n)) => format!("pending, {n} tries left"),
            (x, _) => x.to_string(),
        };
        let v = if sl.version.is_empty() {
            "-"
        } else {
            sl.version.as_str()
        };
        let mark = if sl.running { " (running)" } else { "" };
        out.push_str(&format!(
            "{:<9} {v:<12} {state}{mark}\n",
            format!("slot {}:", sl.slot)
        ));
    }
    match &s.last {
        None => out.push_str(&format!("{:<9} none\n", "last:")),
        Some(l) => {
            out.push_str(&format!(
                "{:<9} {} {} (slot {}) -> {} (slot {}): {}",
                "last:", "update", l.from_version, l.from_slot, l.to_version, l.to_slot, l.result
            ));
            if !l.reason.is_empty() {
                out.push_str(&format!(" — {}", l.reason));
            }
            out.push('\n');
        }
    }
    out
}
