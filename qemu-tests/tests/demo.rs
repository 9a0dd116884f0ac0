//! `scripts/demo` on its offline path, as a CI runner without internet runs it: the default
//! image built with the sample release (stand-in rke2, a test double), booted as a single
//! server with `images/node-config/single-server.yaml` over fw_cfg until its supervisor answers
//! readyz on the forwarded port, and its summary checked against the manifest and the console.

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
    let role = field("role ");
    assert!(
        role.starts_with("server (initializer) as rke2-single")
            && role.ends_with("rke2-server active"),
        "{role}"
    );
    assert_eq!(field("FIPS "), "on (/proc/sys/crypto/fips_enabled=1)");
    assert_eq!(field("SELinux "), "enforcing");
    // The root hash the summary shows is the manifest's, and the booted kernel had the same.
    let image = field("demo: built ");
    let image = image.split(" in ").next().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(ws.join(image.replace(".raw", ".manifest.json"))).unwrap(),
    )
    .unwrap();
    let root_hash = manifest["verity"]["rootHash"].as_str().unwrap();
    assert_eq!(
        field("verity root "),
        format!("{root_hash} (manifest; the booted kernel's rke2.roothash matches)")
    );
    assert_eq!(manifest["rke2"]["version"], version.as_str());
    let origin = manifest["rke2"]["origin"].as_str().unwrap();
    assert!(!origin.is_empty() && !origin.contains('/'), "{origin}");
    assert_eq!(
        field("RKE2 "),
        format!(
            "SAMPLE release {version} (stand-in rke2, not Kubernetes); manifest: {version} from {origin}"
        )
    );
    assert!(field("Kubernetes ").starts_with("NOT RUNNING (SAMPLE release"));
    // readyz: the CA the forwarded port served hashed to what the node printed, and readyz
    // answered ok with the token's password.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("demo: supervisor https://127.0.0.1:")
                && l.ends_with(
                    "/v1-rke2/readyz answered ok (CA checked against the node's token hash)"
                )),
        "{text}"
    );
    let ready = fs::read_to_string(ws.join("target/demo/ready.txt")).unwrap();
    let ca_path = ws.join("target/demo/cacerts.pem");
    let ca = fs::read(&ca_path).unwrap();
    let console =
        String::from_utf8_lossy(&fs::read(ws.join("target/demo/console.log")).unwrap()).to_string();
    let pinned = console
        .lines()
        .find_map(|l| l.split("rke2-node-report: ca_sha256=").nth(1))
        .unwrap()
        .trim()
        .to_string();
    assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"), "{ready}");
    assert_eq!(sha256_hex(&ca_path), pinned);
    assert!(
        ready.contains(&format!("ca verified {pinned}\nreadyz ok ")),
        "{ready}"
    );
    let secs: u64 = field("time to ready ")
        .strip_suffix("s from power-on to /v1-rke2/readyz ok")
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0);
}

/// sha256 of a file, by coreutils (an outside oracle for the script's own check).
fn sha256_hex(path: &std::path::Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
