//! `scripts/demo` on its offline path, as a CI runner without internet runs it: the default
//! image built with the sample release (stand-in rke2, a test double), booted as a single
//! server with `images/node-config/single-server.yaml` over fw_cfg, and its summary checked.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use rke2_qemu_tests::{built, need};
use rke2_testsupport::fixture::{write_release, FixtureOptions};

#[test]
fn demo_offline_path_ends_with_a_configured_single_server() {
    let (base, programs) = need!(rke2_qemu_tests::test_inputs());
    let ws = built::workspace();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let default = fs::read_to_string(ws.join("images/default.yaml")).unwrap();
    let version = default
        .lines()
        .find_map(|l| l.strip_prefix("  version: "))
        .unwrap()
        .trim()
        .to_string();
    let release = work.join("sample-release");
    let standin = rke2_testsupport::stand_in_binary().unwrap();
    write_release(&release, &standin, &FixtureOptions::new(&version)).unwrap();
    // The base the test inputs name lives in the build cache the demo's build looks in.
    let cache = base.parent().unwrap();
    let out = Command::new(ws.join("scripts/demo"))
        .current_dir(&ws)
        .env("RKE2_DEMO_PROGRAMS", &programs)
        .env("RKE2_DEMO_SAMPLE_RELEASE", &release)
        .env("RKE2_IMAGE_CACHE", cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "scripts/demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    let offline = "demo: OFFLINE:";
    assert!(lines.first().unwrap().starts_with(offline), "{text}");
    assert!(lines.last().unwrap().starts_with(offline), "{text}");
    let field = |k: &str| {
        lines
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in:\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("role "), "server (rke2-server)");
    assert_eq!(field("FIPS "), "on (fips=1)");
    assert_eq!(field("SELinux "), "enforcing");
    let root = field("verity root ");
    assert!(
        root.len() == 64 && root.bytes().all(|b| b.is_ascii_hexdigit()),
        "{root}"
    );
    assert!(field("RKE2 ").starts_with(&format!("SAMPLE release {version}")));
    assert!(field("time to ready ").ends_with("by the first-boot agent"));
}
