//! Interruption: the `render` command is killed right before each phase (test hook
//! `RKE2_FIRSTBOOT_ABORT_BEFORE`), then re-run; the final tree must equal an uninterrupted
//! render, file by file.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::Path;
use std::process::Command;

fn render(root: &Path, config: &Path, abort: Option<&str>) -> std::process::ExitStatus {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rke2-firstboot"));
    c.args(["render", "--config"])
        .arg(config)
        .arg("--root")
        .arg(root);
    c.args(["--identity", "mac=52:54:00:00:01:01"]);
    if let Some(p) = abort {
        c.env("RKE2_FIRSTBOOT_ABORT_BEFORE", p);
    }
    c.status().unwrap()
}

fn check(config: &Path) {
    let clean = tempfile::tempdir().unwrap();
    common::seed(clean.path());
    assert!(render(clean.path(), config, None).success());
    let want = common::snapshot(clean.path());
    for phase in [
        "users", "files", "system", "rke2", "airgap", "enable", "stamp",
    ] {
        let t = tempfile::tempdir().unwrap();
        common::seed(t.path());
        let st = render(t.path(), config, Some(phase));
        assert_eq!(
            st.code(),
            Some(86),
            "abort hook before {phase} did not fire"
        );
        assert!(
            !t.path().join("var/lib/rke2-firstboot/done").exists(),
            "stamp before completion ({phase})"
        );
        if phase != "stamp" {
            // Until the enable phase has run, no RKE2 service may be enabled.
            let wants = t.path().join("etc/systemd/system/multi-user.target.wants");
            for unit in ["rke2-server.service", "rke2-agent.service"] {
                assert!(
                    wants.join(unit).symlink_metadata().is_err(),
                    "{unit} enabled before phase enable ({phase})"
                );
            }
        }
        assert!(
            render(t.path(), config, None).success(),
            "re-run after {phase}"
        );
        assert_eq!(
            common::snapshot(t.path()),
            want,
            "re-run after an abort before {phase} differs"
        );
    }
}

#[test]
fn native_cluster_rerun_after_kill_at_each_phase() {
    check(&common::manifest_dir().join("../images/node-config/cluster.yaml"));
}

#[test]
fn cloud_config_rerun_after_kill_at_each_phase() {
    check(&common::manifest_dir().join("tests/fixtures/cloud-config.yaml"));
}

#[test]
fn ignition_rerun_after_kill_at_each_phase() {
    check(&common::manifest_dir().join("tests/fixtures/ignition.ign"));
}

#[test]
fn rerender_over_a_finished_tree_is_a_fixed_point() {
    let config = common::manifest_dir().join("tests/fixtures/cloud-config.yaml");
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    assert!(render(t.path(), &config, None).success());
    let first = common::snapshot(t.path());
    assert!(render(t.path(), &config, None).success());
    assert_eq!(common::snapshot(t.path()), first);
}
