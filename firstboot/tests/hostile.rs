//! Hostile inputs: each fails with a specific error and nothing is written.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::io::Write;
use std::path::Path;

use base64::Engine;
use rke2_firstboot::agent;
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::sources::Found;

/// Loads and renders `bytes` into `root`; returns the error text.
fn attempt_in(root: &Path, bytes: &[u8]) -> String {
    let found = Found {
        origin: "hostile".into(),
        bytes: bytes.to_vec(),
        meta_hostname: None,
    };
    let r = agent::load(&found, &Identity::default())
        .and_then(|l| agent::render_to(&Root::new(root), &l, &mut |_| Ok(())));
    match r {
        Ok(()) => panic!("hostile input was accepted"),
        Err(e) => e.to_string(),
    }
}

fn attempt(bytes: &[u8]) -> String {
    let t = tempfile::tempdir().unwrap();
    let e = attempt_in(t.path(), bytes);
    assert_eq!(
        common::dump(t.path()),
        Vec::<String>::new(),
        "something was written for: {e}"
    );
    e
}

fn expect(bytes: &[u8], needle: &str) {
    let e = attempt(bytes);
    assert!(
        e.contains(needle),
        "error {e:?} does not contain {needle:?}"
    );
}

#[test]
fn path_traversal() {
    expect(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/../../../tmp/evil","contents":{"source":"data:,x"}}]}}"#,
        "is not clean",
    );
    expect(
        b"#cloud-config\nwrite_files:\n  - path: ../../etc/evil\n    content: x\n",
        "contains `..`",
    );
    expect(
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\nfiles:\n  - path: /var/../../x\n    content: y\n",
        "contains `..`",
    );
    expect(
        br#"{"ignition":{"version":"3.4.0"},"systemd":{"units":[{"name":"../../x.service","contents":""}]}}"#,
        "is not a unit name",
    );
}

#[test]
fn absolute_symlink_inside_root_is_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("etc")).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path().join("etc/cron.d")).unwrap();
    let before = common::dump(t.path());
    let e = attempt_in(
        t.path(),
        b"#cloud-config\nhostname: h1\nwrite_files:\n  - path: /etc/cron.d/evil\n    content: '* * * * * root sh'\n",
    );
    assert!(e.contains("is a symlink inside the target root"), "{e}");
    assert_eq!(common::dump(t.path()), before, "the root changed");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn network_directory_symlinked_out_of_the_root_fails_before_any_write() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("etc/systemd")).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path().join("etc/systemd/network")).unwrap();
    let before = common::dump(t.path());
    let e = attempt_in(
        t.path(),
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: h1\nusers:\n  - name: ops\nnetwork:\n  interface: eth0\n  addresses: [10.0.0.5/24]\n",
    );
    assert!(e.contains("is a symlink inside the target root"), "{e}");
    // Checked up front: not even the users phase ran.
    assert_eq!(common::dump(t.path()), before, "the root changed");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn huge_config() {
    let mut big = b"#cloud-config\nwrite_files:\n  - path: /x\n    content: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    expect(&big, "more than the limit of 4194304 bytes");
}

#[test]
fn gzip_bomb() {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..80 {
        z.write_all(&zeros).unwrap();
    }
    let z = z.finish().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&z);
    let cfg = format!(
        "#cloud-config\nwrite_files:\n  - path: /bomb\n    encoding: gz+b64\n    content: {b64}\n"
    );
    expect(cfg.as_bytes(), "exceed the limit of 67108864 bytes");
}

#[test]
fn invalid_utf8() {
    expect(
        b"#cloud-config\nhostname: caf\xe9\n",
        "not valid UTF-8 (first bad byte at offset 27)",
    );
}

#[test]
fn yaml_anchor_bomb() {
    let mut y = String::from("#cloud-config\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let mut prev = "a";
    for n in names {
        y.push_str(&format!(
            "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = n;
    }
    let e = attempt(y.as_bytes());
    assert!(
        e.contains("budget") || e.contains("limit") || e.contains("alias"),
        "{e}"
    );
    // In the native dialect the bomb sits in a pass-through map, which accepts any value.
    let body: String = y.lines().skip(1).map(|l| format!("    {l}\n")).collect();
    let native =
        format!("apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  config:\n{body}");
    let e = attempt(native.as_bytes());
    assert!(
        e.contains("budget") || e.contains("limit") || e.contains("alias"),
        "{e}"
    );
}

#[test]
fn bad_base64() {
    expect(
        b"#cloud-config\nwrite_files:\n  - path: /x\n    encoding: b64\n    content: 'not*base64!'\n",
        "write_files[0].content: not valid base64",
    );
    expect(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:;base64,@@@"}}]}}"#,
        "storage.files[0].contents.source: not valid base64",
    );
}

#[test]
fn unknown_ignition_versions() {
    expect(
        br#"{"ignition":{"version":"4.0.0"}}"#,
        "ignition.version: \"4.0.0\" is not a spec version Ignition knows",
    );
    expect(
        br#"{"ignition":{"version":"2.3.0"},"storage":{}}"#,
        "ignition.version: \"2.3.0\": only Ignition spec 3.x",
    );
    expect(
        br#"{"storage":{"files":[]}}"#,
        "ignition.version is missing",
    );
}

#[test]
fn unsafe_keys_are_errors() {
    expect(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"disks":[{"device":"/dev/vda","wipeTable":true}]}}"#,
        "storage.disks: not supported",
    );
    expect(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/x","contents":{"source":"https://example.com/x"}}]}}"#,
        "only inline data: URLs are supported",
    );
    expect(
        b"#cloud-config\nfs_setup:\n  - device: /dev/vdb\n    filesystem: ext4\n",
        "fs_setup: not supported",
    );
    expect(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,abc","verification":{"hash":"sha512-00"}}}]}}"#,
        "a sha512 sum has 128 hex digits",
    );
}

#[test]
fn hostile_fields() {
    expect(
        b"#cloud-config\nhostname: 'evil\nname'\n",
        "not a valid host name",
    );
    expect(
        b"#cloud-config\nusers:\n  - name: 'a:b'\n",
        "not a valid user name",
    );
    expect(
        b"#cloud-config\nusers:\n  - name: ops\n    gecos: \"x:0:0\"\n",
        "contains ':'",
    );
    expect(
        b"#!/bin/sh\nrm -rf /\n",
        "shell-script user-data is not supported",
    );
    expect(
        b"#cloud-config\ntimezone: ../../etc/shadow\n",
        "is not a zone name",
    );
    expect(
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  config:\n    token: x\n",
        "cluster.config.token: set cluster.token instead",
    );
    expect(
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  manifests:\n    ../evil: x\n",
        "must be a plain file or chart name",
    );
    expect(
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\nbogus: 1\n",
        "unknown key `bogus`",
    );
    expect(
        b"apiVersion: rke2-image/v2\nkind: NodeConfig\n",
        "apiVersion \"rke2-image/v2\" is not supported",
    );
}

#[test]
fn parse_errors_do_not_quote_secrets() {
    let e = attempt(
        b"apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  token: K10secretsecret::server:pw-do-not-print\n  bogus: 1\n",
    );
    assert!(e.contains("unknown key `bogus`"), "{e}");
    assert!(!e.contains("pw-do-not-print"), "token quoted in error: {e}");
}

#[test]
fn gzip_user_data_bomb() {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(b"#cloud-config\n").unwrap();
    z.write_all(&vec![b' '; 5 << 20]).unwrap();
    expect(
        &z.finish().unwrap(),
        "gzip-compressed user-data decompresses to more than the limit of 4194304 bytes",
    );
}
