//! QEMU fw_cfg (`-fw_cfg name=opt/org.rke2-image/config,file=...`), seen through the
//! `qemu_fw_cfg` module's sysfs interface.

use std::path::{Path, PathBuf};

use super::{read_limited, Found, Source, SourceError};
use crate::render::Phase;

/// fw_cfg keys, in priority order: ours, then Ignition's.
pub const KEYS: [&str; 2] = ["opt/org.rke2-image/config", "opt/com.coreos/config"];

#[derive(Debug)]
pub struct FwCfg {
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
}

impl Source for FwCfg {
    fn name(&self) -> &'static str {
        "QEMU fw_cfg"
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        for k in KEYS {
            let p = key_path(&self.sys, k);
            if let Some(bytes) = read_limited(&p)? {
                return Ok(Some(Found {
                    origin: format!("fw_cfg {k}"),
                    bytes,
                    meta_hostname: None,
                }));
            }
        }
        Ok(None)
    }
}

/// Test-only knob: the phase name at which `run` stops forever (see [`pause_knob`]).
pub const PAUSE_KEY: &str = "opt/org.rke2-image/test/pause-before";

/// What the test-only pause knob asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseKnob {
    Absent,
    Pause(Phase),
    /// Present but unusable: the warning to print; the run goes on without pausing.
    Ignored(String),
}

fn key_path(sys: &Path, key: &str) -> PathBuf {
    sys.join("firmware/qemu_fw_cfg/by_name")
        .join(key)
        .join("raw")
}

/// Reads the pause knob (`-fw_cfg name=opt/org.rke2-image/test/pause-before,string=enable`)
/// from the sysfs root `sys`. Never an error: a broken knob must not fail a real boot.
pub fn pause_knob(sys: &Path) -> PauseKnob {
    let p = key_path(sys, PAUSE_KEY);
    let bytes = match read_limited(&p) {
        Ok(None) => return PauseKnob::Absent,
        Ok(Some(b)) => b,
        Err(e) => return PauseKnob::Ignored(format!("test knob {PAUSE_KEY}: {e}; ignored")),
    };
    let text = String::from_utf8_lossy(&bytes);
    // QEMU's string= carries no terminator, file= often a newline; tolerate both (and a NUL).
    let name = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    match Phase::from_name(name) {
        Some(ph) => PauseKnob::Pause(ph),
        None => PauseKnob::Ignored(format!(
            "test knob {PAUSE_KEY}: unknown phase {name:?} (known: {}); ignored",
            crate::render::PHASES.map(Phase::name).join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys_with(value: Option<&[u8]>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let other = key_path(t.path(), KEYS[0]);
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        std::fs::write(other, b"enable").unwrap();
        if let Some(v) = value {
            let p = key_path(t.path(), PAUSE_KEY);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        t
    }

    #[test]
    fn pause_knob_from_fake_sysfs() {
        // Only our key counts, not a configuration that happens to hold a phase name.
        assert_eq!(pause_knob(sys_with(None).path()), PauseKnob::Absent);
        assert_eq!(
            pause_knob(sys_with(Some(b"enable")).path()),
            PauseKnob::Pause(Phase::Enable)
        );
        assert_eq!(
            pause_knob(sys_with(Some(b"rke2\n")).path()),
            PauseKnob::Pause(Phase::Rke2)
        );
        match pause_knob(sys_with(Some(b"enabel")).path()) {
            PauseKnob::Ignored(w) => {
                assert!(
                    w.contains("\"enabel\"") && w.contains("users, files"),
                    "{w}"
                )
            }
            other => panic!("{other:?}"),
        }
        // No fw_cfg at all (module not loaded, not QEMU).
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(pause_knob(empty.path()), PauseKnob::Absent);
    }
}
