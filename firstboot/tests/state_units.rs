//! Every directory rke2-init mounts from the state filesystem (`state::MOUNTS`) has a mount
//! unit in overlays/base describing that mount, with `DefaultDependencies=no`: without it
//! systemd stops the mount at power-off while services still use it ("Failed unmounting
//! var.mount") and the state ext4 is left not clean. The QEMU test
//! `clean_power_off_leaves_state_filesystem_clean` checks the effect on a real shutdown.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use rke2_firstboot::init::state::{Backing, MOUNTS};
use rke2_image_contract::paths::STATE_MOUNT;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/base/usr/lib/systemd/system")
}

/// `Key=value` lines of a unit file (the last one wins, as in systemd).
fn keys(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn each_state_mount_has_a_unit_describing_it() {
    for (dir, backing) in MOUNTS {
        let path = units_dir().join(format!("{dir}.mount"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (every state mount needs a unit)", path.display()));
        let k = keys(&text);
        let want_what = match backing {
            Backing::Overlay => "overlay".to_string(),
            Backing::Persistent => format!("/{STATE_MOUNT}/{dir}"),
        };
        let want_options = match backing {
            Backing::Overlay => format!(
                "lowerdir=/{dir},upperdir=/{STATE_MOUNT}/{dir}/upper,workdir=/{STATE_MOUNT}/{dir}/work"
            ),
            Backing::Persistent => "bind".to_string(),
        };
        let want = [
            ("DefaultDependencies", "no".to_string()),
            ("Where", format!("/{dir}")),
            ("What", want_what),
            ("Options", want_options),
        ];
        for (key, value) in want {
            assert_eq!(
                k.get(key).map(String::as_str),
                Some(value.as_str()),
                "{}: {key}",
                path.display()
            );
        }
    }
}

#[test]
fn no_mount_unit_without_a_state_mount() {
    let mut extra = Vec::new();
    for e in std::fs::read_dir(units_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(dir) = name.strip_suffix(".mount") {
            if !MOUNTS.iter().any(|(m, _)| *m == dir) {
                extra.push(name);
            }
        }
    }
    assert!(
        extra.is_empty(),
        "mount units for nothing rke2-init mounts: {extra:?}"
    );
}

/// Oracle: systemd's own parser accepts each unit (name matches Where=, known keys).
#[test]
fn state_mount_units_pass_systemd_analyze() {
    if !rke2_testsupport::prereq::program("systemd-analyze", "systemd") {
        return;
    }
    for (dir, _) in MOUNTS {
        let path = units_dir().join(format!("{dir}.mount"));
        let o = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && err.trim().is_empty(),
            "{}: {err}",
            path.display()
        );
    }
}
