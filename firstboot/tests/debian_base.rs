//! Rendering onto the account files, units and zoneinfo of a real Debian base (taken from the
//! tarball in `RKE2_TEST_BASE`): shadow-utils must find nothing new to complain about.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::Path;

use rke2_firstboot::agent;
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;

/// Extracts `etc/`, `usr/lib/systemd/system/`, `usr/share/zoneinfo/`, the shells and the
/// top-level symlinks (`bin -> usr/bin`, ...) of the base into `dst`; None when RKE2_TEST_BASE is unset.
fn base_subset(dst: &Path) -> Option<()> {
    let base = rke2_testsupport::prereq::test_base()?;
    let f = std::fs::File::open(&base).unwrap();
    let name = base.to_string_lossy().into_owned();
    let reader: Box<dyn std::io::Read> = if name.ends_with(".zst") {
        Box::new(zstd::Decoder::new(f).unwrap())
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let want = ["etc/", "usr/lib/systemd/system/", "usr/share/zoneinfo/"]
            .iter()
            .any(|pre| p.starts_with(pre))
            || [
                "usr/bin/bash",
                "usr/sbin/nologin",
                "bin",
                "sbin",
                "lib",
                "lib64",
            ]
            .contains(&p.as_str());
        if want {
            e.unpack_in(dst).unwrap();
        }
    }
    Some(())
}

fn shadow_utils_complaints(root: &Path) -> Vec<String> {
    let r = root.display().to_string();
    let mut out = Vec::new();
    for (cmd, args) in [
        ("pwck", vec!["-r", "-R", &r]),
        ("grpck", vec!["-r", "-R", &r]),
    ] {
        let o = std::process::Command::new(cmd)
            .args(&args)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        out.extend(
            text.lines()
                .filter(|l| !l.ends_with("no changes"))
                .map(|l| format!("{cmd}: {l}")),
        );
    }
    out.sort();
    out
}

fn render_on_base(
    config: Vec<u8>,
    id: &[&str],
) -> Option<(tempfile::TempDir, Vec<String>, Vec<String>)> {
    let t = tempfile::tempdir().unwrap();
    base_subset(t.path())?;
    let before = shadow_utils_complaints(t.path());
    let loaded = common::load("cfg", config, &Identity::from_args(id).unwrap());
    agent::render_to(&Root::new(t.path()), &loaded, &mut |_| Ok(())).unwrap();
    let after = shadow_utils_complaints(t.path());
    Some((t, before, after))
}

fn new_complaints(before: &[String], after: &[String]) -> Vec<String> {
    after
        .iter()
        .filter(|l| !before.contains(l))
        .cloned()
        .collect()
}

#[test]
fn cloud_config_users_on_debian_accounts() {
    let Some((t, before, after)) = render_on_base(common::fixture("cloud-config-os.yaml"), &[])
    else {
        return;
    };
    // ops gets a home in the root; only "home does not exist"-style notes about base system
    // users may remain, and nothing new.
    assert_eq!(new_complaints(&before, &after), Vec::<String>::new());
    let passwd = std::fs::read_to_string(t.path().join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("\nops:x:1000:1000:Operations:/home/ops:/bin/bash\n"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(t.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "sudo:x:27:ops"), "{group}");
    // Europe/Berlin exists in the base's zoneinfo, so the zone check passed.
    assert_eq!(
        std::fs::read_link(t.path().join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
}

#[test]
fn ignition_units_and_cis_etcd_user_on_debian() {
    let Some((t, before, after)) = render_on_base(common::fixture("ignition.ign"), &[]) else {
        return;
    };
    assert_eq!(new_complaints(&before, &after), Vec::<String>::new());
    assert!(t
        .path()
        .join("etc/systemd/system/serial-getty@ttyS0.service.d/autologin-core.conf")
        .is_file());
    let Some((t, before, after)) =
        render_on_base(common::example("cluster.yaml"), &["mac=52:54:00:00:01:01"])
    else {
        return;
    };
    assert_eq!(new_complaints(&before, &after), Vec::<String>::new());
    let passwd = std::fs::read_to_string(t.path().join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("etcd:x:") && l.ends_with(":/sbin/nologin")),
        "{passwd}"
    );
}

#[test]
fn unknown_timezone_is_refused_on_debian() {
    let t = tempfile::tempdir().unwrap();
    if base_subset(t.path()).is_none() {
        return;
    }
    let loaded = common::load(
        "tz",
        b"#cloud-config\ntimezone: Mars/Olympus_Mons\n".to_vec(),
        &Identity::default(),
    );
    let e = agent::render_to(&Root::new(t.path()), &loaded, &mut |_| Ok(())).unwrap_err();
    assert!(
        e.to_string()
            .contains("is not a zone in the image's /usr/share/zoneinfo"),
        "{e}"
    );
}
