//! The `rke2-firstboot` command line and the shipped unit file.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rke2-firstboot"))
}

fn out(c: &mut Command) -> (i32, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn validate_exit_status_and_messages() {
    let dir = common::manifest_dir();
    let (code, text) = out(bin()
        .arg("validate")
        .arg(dir.join("../images/node-config/cluster.yaml")));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok (0 warnings)"), "{text}");
    assert!(!text.contains("4f1c2a9e7b3d5f60"), "token leaked: {text}");

    let (code, text) = out(bin()
        .arg("validate")
        .arg(dir.join("tests/fixtures/cloud-config.yaml")));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning: package_update: ignored"), "{text}");

    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("bad.ign");
    std::fs::write(&bad, r#"{"ignition":{"version":"2.2.0"}}"#).unwrap();
    let (code, text) = out(bin().arg("validate").arg(&bad));
    assert_eq!(code, 1);
    assert!(
        text.contains("error:") && text.contains("only Ignition spec 3.x"),
        "{text}"
    );
}

#[test]
fn render_then_status() {
    let t = tempfile::tempdir().unwrap();
    let (code, text) = out(bin().args(["status", "--root"]).arg(t.path()));
    assert_eq!((code, text.trim()), (1, "first boot has not run yet"));
    let cfg = common::manifest_dir().join("../images/node-config/cluster.yaml");
    let (code, text) = out(bin()
        .args(["render", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(t.path()));
    assert_eq!(code, 1);
    assert!(
        text.contains("no node in the configuration matches this machine"),
        "{text}"
    );
    let (code, text) = out(bin()
        .args(["render", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(t.path())
        .args(["--identity", "serial=SRV-0003"]));
    assert_eq!(code, 0, "{text}");
    let (code, text) = out(bin().args(["status", "--root"]).arg(t.path()));
    assert_eq!(code, 0);
    assert!(
        text.contains("\"node-name\": \"cp-3\"") && text.contains("\"role\": \"server\""),
        "{text}"
    );
    assert!(!text.contains("K10"), "token in status: {text}");
}

#[test]
fn unit_file_passes_systemd_analyze() {
    let unit = common::manifest_dir()
        .join("../overlays/firstboot/usr/lib/systemd/system/rke2-firstboot.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for l in [
        "Type=notify",
        "Before=rke2-server.service rke2-agent.service",
        "After=systemd-networkd.service",
        "Wants=systemd-networkd.service",
        "ExecStart=/usr/bin/rke2-firstboot run",
        "ConditionPathExists=!/var/lib/rke2-firstboot/done",
    ] {
        assert!(text.lines().any(|x| x == l), "unit lacks {l}");
    }
    // wait-online would stall first boot on a network without DHCP.
    assert!(
        !text
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("network-online")),
        "{text}"
    );
    let Ok(o) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    else {
        rke2_testsupport::prereq::missing("program `systemd-analyze` (Debian package systemd)");
        return;
    };
    // The only acceptable complaint: the binary is not installed on the test host.
    let err = String::from_utf8_lossy(&o.stderr);
    let bad: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("/usr/bin/rke2-firstboot is not executable"))
        .collect();
    assert!(bad.is_empty(), "systemd-analyze verify: {err}");
}

/// `validate` names what it cannot check without a root; `validate --root` checks it, refusing
/// what `render` refuses on that root, with nothing written by either.
#[test]
fn validate_with_and_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.ign");
    std::fs::write(
        &cfg,
        r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core","groups":["docker"]}]}}"#,
    )
    .unwrap();
    let (code, text) = out(bin().arg("validate").arg(&cfg));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("note: not checked without --root DIR: owners and groups exist"));
    let root = tempfile::tempdir().unwrap();
    common::seed(root.path());
    let before = common::snapshot(root.path());
    let (code, text) = out(bin()
        .arg("validate")
        .arg(&cfg)
        .arg("--root")
        .arg(root.path()));
    assert_eq!(code, 1, "{text}");
    let want = "c.ign: passwd.users[0]: group \"docker\" does not exist in the image";
    assert!(text.contains(want), "{text}");
    let (code, text) = out(bin()
        .args(["render", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(root.path()));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(want), "{text}");
    assert_eq!(common::snapshot(root.path()), before);
}
