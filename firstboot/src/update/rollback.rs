//! `rke2-update rollback`: make the other slot boot next by marking the running entry bad
//! (`+0`: systemd-boot sorts it last). Only when the other slot holds a good (blessed) entry:
//! a pending one has never proven it boots, and a bad one already failed.

use rke2_image_contract::update::EntryState;

use super::{esp, other, running_slot, state, Roots};

/// Returns the message for the operator.
pub fn rollback(roots: &Roots) -> Result<String, String> {
    let b = roots.disk_boot()?;
    let slot = running_slot(&b)?;
    let target = other(slot);
    let ii = roots.image_info()?;
    let entries = esp::list(&roots.esp, &ii.name)?;
    let Some(to) = esp::of_slot(&entries, target) else {
        return Err(format!(
            "slot {target} has no boot entry (nothing was ever installed there, or its update \
             failed); nothing to roll back to"
        ));
    };
    match to.state() {
        EntryState::Good => {}
        EntryState::Pending(n) => {
            return Err(format!(
                "slot {target} ({}) is pending ({n} tries left) and has never passed its health \
                 check; rolling back to it is not safe (reboot to try it, or apply again)",
                to.version
            ))
        }
        EntryState::Bad => {
            return Err(format!(
                "slot {target} ({}) is marked bad (it failed its boot tries); nothing good to \
                 roll back to",
                to.version
            ))
        }
    }
    let run = esp::of_slot(&entries, slot).ok_or_else(|| {
        format!(
            "the running slot {slot} has no boot entry on {}",
            roots.esp.display()
        )
    })?;
    esp::mark_bad(&roots.esp, run)?;
    let (from_v, to_v) = (ii.version.clone(), to.version.clone());
    state::update(&roots.state, |s| {
        s.last = Some(state::Record {
            from_slot: slot.to_string(),
            from_version: from_v,
            to_slot: target.to_string(),
            to_version: to_v,
            result: state::ROLLED_BACK.to_string(),
            reason: "by operator".to_string(),
            tries: 0,
        })
    })?;
    Ok(format!(
        "slot {slot} ({}) marked bad; reboot to boot slot {target} ({})",
        ii.version, to.version
    ))
}
