//! `rke2-update` on temporary directories: bundles made here exactly as
//! `contract::update` specifies (ustar, members in order, ed25519 over update.json), a node
//! tree with regular files standing in for the slot partitions, and the written slot checked
//! with `veritysetup verify` (userspace dm-verity, the outside oracle) where the node would use
//! the kernel's dm-verity.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use rke2_firstboot::update::apply::{self, Options, Verifier};
use rke2_firstboot::update::health::{self, System, UnitState};
use rke2_firstboot::update::state::{self, HealthReport, Record, State};
use rke2_firstboot::update::{bundle, esp, rollback, status, Roots, BOOT_COUNT_EFIVAR};
use rke2_image_contract::update::{self as contract, Entry, Member, UpdateInfo};
use sha2::{Digest, Sha256};

const IMAGE: &str = "rke2-node";
const PART: u64 = 4 << 20;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A bundle's parts (root/verity from `veritysetup format` when `real`).
struct Parts {
    root: Vec<u8>,
    verity: Vec<u8>,
    root_hash: String,
}

fn parts(dir: &Path) -> Parts {
    let root: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let (rp, vp) = (dir.join("root.img"), dir.join("verity.img"));
    fs::write(&rp, &root).unwrap();
    let out = Command::new("veritysetup")
        .args([
            "format",
            "--salt",
            "00",
            "--uuid",
            "00000000-0000-0000-0000-000000000001",
        ])
        .arg(&rp)
        .arg(&vp)
        .output()
        .expect("veritysetup (cryptsetup-bin; scripts/setup-host installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let root_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string();
    Parts {
        verity: fs::read(&vp).unwrap(),
        root,
        root_hash,
    }
}

fn member(name: &str, data: &[u8]) -> Member {
    Member {
        name: name.into(),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    }
}

fn info(version: &str, p: &Parts, data: &[(&str, Vec<u8>)]) -> UpdateInfo {
    UpdateInfo {
        schema: contract::SCHEMA.into(),
        image: IMAGE.into(),
        version: version.into(),
        architecture: contract::ARCH_X86_64.into(),
        epoch: 1,
        root_hash: p.root_hash.clone(),
        root_size: p.root.len() as u64,
        verity_size: p.verity.len() as u64,
        members: data.iter().map(|(n, d)| member(n, d)).collect(),
        cmdlines: vec![],
    }
}

fn members(version: &str, p: &Parts) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (contract::MANIFEST, b"{}".to_vec()),
        (contract::UKI_A, format!("uki a {version}").into_bytes()),
        (contract::UKI_B, format!("uki b {version}").into_bytes()),
        (contract::VERITY, p.verity.clone()),
        (contract::ROOT, p.root.clone()),
    ]
}

/// The tar as the builder writes it; `tamper` changes member bytes after signing.
fn tar(info_json: &[u8], sig: &[u8], data: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, d: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(0o444);
        h.set_mtime(1);
        h.set_cksum();
        b.append_data(&mut h, name, d).unwrap();
    };
    add(contract::INFO, info_json);
    add(contract::SIGNATURE, sig);
    for (n, d) in data {
        add(n, d);
    }
    b.into_inner().unwrap()
}

fn bundle(version: &str, p: &Parts, k: &SigningKey) -> Vec<u8> {
    let data = members(version, p);
    let i = serde_json::to_vec(&info(version, p, &data)).unwrap();
    let sig = k.sign(&i).to_bytes();
    tar(&i, &sig, &data)
}

struct Node {
    _d: tempfile::TempDir,
    roots: Roots,
}

fn node(slot: char, version: &str, entries: &[&str]) -> Node {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let roots = Roots::system(&root);
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    w(
        "usr/share/rke2-image/image-info.json",
        format!(
            "{{\n  \"name\": \"{IMAGE}\",\n  \"version\": \"{version}\",\n  \"epoch\": 1\n}}\n"
        )
        .as_bytes(),
    );
    w(
        &format!("{}/image.pem", contract::KEYS_DIR),
        key(1)
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap()
            .as_bytes(),
    );
    w(contract::POLICY, br#"{"tries":3,"healthTimeoutSeconds":5}"#);
    let labels = ["esp", "root-a", "root-a-verity", "root-b", "root-b-verity"];
    let parts: Vec<serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({"label": l, "node": format!("/dev/vda{}", i + 1),
                "partuuid": format!("0000000{}-0000-0000-0000-000000000000", i + 1)})
        })
        .collect();
    for i in 2..=5 {
        w(&format!("dev/vda{i}"), &vec![0u8; PART as usize]);
    }
    w(
        contract::BOOT_INFO,
        serde_json::json!({"source": "disk", "slot": slot.to_string(), "rootHash": "ab",
            "disk": "/dev/vda", "partitions": parts})
        .to_string()
        .as_bytes(),
    );
    fs::create_dir_all(root.join("efi/EFI/Linux")).unwrap();
    for e in entries {
        w(&format!("efi/EFI/Linux/{e}"), b"uki");
    }
    Node { _d: d, roots }
}

fn entries(n: &Node) -> Vec<String> {
    esp::list(&n.roots.esp, IMAGE)
        .unwrap()
        .iter()
        .map(Entry::file_name)
        .collect()
}

/// `veritysetup verify` on the files standing in for the partitions (userspace dm-verity).
struct Veritysetup;

impl Verifier for Veritysetup {
    fn verify(&self, root: &Path, verity: &Path, info: &UpdateInfo) -> Result<(), String> {
        let out = Command::new("veritysetup")
            .arg("verify")
            .arg(root)
            .arg(verity)
            .arg(&info.root_hash)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

fn apply_bytes(n: &Node, b: &[u8], opts: &Options) -> Result<apply::Done, String> {
    let mut r: &[u8] = b;
    apply::apply(
        &n.roots,
        &mut r,
        "test.update",
        opts,
        &Veritysetup,
        &mut |_| {},
    )
}

fn prereq() -> bool {
    rke2_testsupport::prereq::program("veritysetup", "cryptsetup-bin")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn reads_a_good_bundle_and_refuses_bad_ones() {
    if !prereq() {
        return;
    }
    let t = tmp();
    let p = parts(t.path());
    let n = node('a', "1.0.0", &["rke2-node-1.0.0-a.efi"]);
    let read = |b: &[u8]| {
        let mut seen = Vec::new();
        bundle::read(b, &n.roots.keys, &mut |_| Ok(()), &mut |m, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map_err(|e| e.to_string())?;
            seen.push((m.name.clone(), v.len()));
            Ok(())
        })
        .map(|(i, k)| (i.version, k, seen))
        .map_err(|e| e.to_string())
    };
    let good = bundle("1.1.0", &p, &key(1));
    let (v, k, seen) = read(&good).unwrap();
    assert_eq!((v.as_str(), k.as_str()), ("1.1.0", "image.pem"));
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        contract::MEMBERS
    );
    // Another key: names the keys dir and the keys tried.
    let e = read(&bundle("1.1.0", &p, &key(2))).unwrap_err();
    assert!(
        e.contains("none of the trusted keys") && e.contains("image.pem"),
        "{e}"
    );
    assert!(e.contains(&n.roots.keys.display().to_string()), "{e}");
    // A member changed after signing.
    let data = members("1.1.0", &p);
    let i = serde_json::to_vec(&info("1.1.0", &p, &data)).unwrap();
    let sig = key(1).sign(&i).to_bytes();
    let mut bad = data.clone();
    bad[4].1[100] ^= 1;
    let e = read(&tar(&i, &sig, &bad)).unwrap_err();
    assert!(e.contains("member root.img: sha256"), "{e}");
    // Reordered members.
    let mut swapped = data.clone();
    swapped.swap(1, 2);
    let e = read(&tar(&i, &sig, &swapped)).unwrap_err();
    assert!(e.contains("\"uki-b.efi\" where uki-a.efi belongs"), "{e}");
    // Truncated inside root.img, and before it.
    let e = read(&good[..good.len() - 600_000]).unwrap_err();
    assert!(e.contains("root.img"), "{e}");
    let e = read(&good[..2048]).unwrap_err();
    assert!(e.contains("inside member update.json.sig"), "{e}");
    let e = read(&good[..2560]).unwrap_err();
    assert!(e.contains("where member manifest.json should begin"), "{e}");
    // A tampered update.json no longer verifies.
    let mut forged = i.clone();
    let pos = forged.iter().position(|c| *c == b'1').unwrap();
    forged[pos] = b'9';
    let e = read(&tar(&forged, &sig, &data)).unwrap_err();
    assert!(e.contains("none of the trusted keys"), "{e}");
}

#[test]
fn applies_into_the_inactive_slot_and_verifies_it() {
    if !prereq() {
        return;
    }
    let t = tmp();
    let p = parts(t.path());
    // A stale good entry of slot b: removed before anything is written.
    let n = node(
        'a',
        "1.0.0",
        &["rke2-node-1.0.0-a.efi", "rke2-node-0.9-b.efi"],
    );
    let done = apply_bytes(&n, &bundle("1.1.0", &p, &key(1)), &Options::default()).unwrap();
    assert_eq!(done.entry, "rke2-node-1.1.0-b+3.efi");
    assert!(!done.downgrade);
    assert_eq!(
        entries(&n),
        ["rke2-node-1.0.0-a.efi", "rke2-node-1.1.0-b+3.efi"]
    );
    let uki = fs::read(n.roots.esp.join("EFI/Linux/rke2-node-1.1.0-b+3.efi")).unwrap();
    assert_eq!(uki, b"uki b 1.1.0");
    let rb = fs::read(n.roots.root.join("dev/vda4")).unwrap();
    assert_eq!(&rb[..p.root.len()], &p.root[..]);
    let s = state::load(&n.roots.state).unwrap();
    let l = s.last.unwrap();
    assert_eq!(
        (
            l.from_version.as_str(),
            l.to_slot.as_str(),
            l.to_version.as_str(),
            l.result.as_str()
        ),
        ("1.0.0", "b", "1.1.0", "pending")
    );
    // status
    let st = status::status(&n.roots).unwrap();
    let j = serde_json::to_value(&st).unwrap();
    assert_eq!(j["running"]["slot"], "a");
    assert_eq!(j["slots"][1]["state"], "pending");
    assert_eq!(j["slots"][1]["triesLeft"], 3);
    assert_eq!(j["last"]["result"], "pending");
    let h = status::human(&st);
    assert!(
        h.contains("slot b:   1.1.0        pending, 3 tries left"),
        "{h}"
    );
}

#[test]
fn a_slot_that_does_not_match_the_signed_root_hash_is_never_installed() {
    if !prereq() {
        return;
    }
    let t = tmp();
    let mut p = parts(t.path());
    // The signed hash of another root: the bundle is consistent, the written root is not.
    p.root_hash = "11".repeat(32);
    let n = node(
        'a',
        "1.0.0",
        &["rke2-node-1.0.0-a.efi", "rke2-node-0.9-b.efi"],
    );
    let e = apply_bytes(&n, &bundle("1.1.0", &p, &key(1)), &Options::default()).unwrap_err();
    assert!(e.contains("verifying slot b"), "{e}");
    assert!(e.contains("keeps booting slot a (1.0.0)"), "{e}");
    assert_eq!(entries(&n), ["rke2-node-1.0.0-a.efi"]);
    assert!(!esp::temp_path(&n.roots.esp, 'b').exists());
    let l = state::load(&n.roots.state).unwrap().last.unwrap();
    assert_eq!(l.result, "failed");
    assert!(l.reason.contains("verifying slot b"), "{}", l.reason);
}

#[test]
fn refuses_other_images_old_versions_and_unblessed_slots() {
    if !prereq() {
        return;
    }
    let t = tmp();
    let p = parts(t.path());
    let n = node('b', "2.0", &["rke2-node-2.0-b.efi", "rke2-node-1.0-a.efi"]);
    let before = entries(&n);
    let e = apply_bytes(&n, &bundle("2.0", &p, &key(1)), &Options::default()).unwrap_err();
    assert!(e.contains("already running 2.0"), "{e}");
    let e = apply_bytes(&n, &bundle("1.5", &p, &key(1)), &Options::default()).unwrap_err();
    assert!(e.contains("--allow-downgrade"), "{e}");
    assert_eq!(entries(&n), before);
    assert!(state::load(&n.roots.state).unwrap().last.is_none());
    // Another image / architecture (signed, so only the checks refuse).
    let data = members("3.0", &p);
    for (field, want) in [
        ("image", "another image"),
        ("architecture", "architecture arm64"),
    ] {
        let mut i = info("3.0", &p, &data);
        if field == "image" {
            i.image = "other".into();
        } else {
            i.architecture = "arm64".into();
        }
        let j = serde_json::to_vec(&i).unwrap();
        let b = tar(&j, &key(1).sign(&j).to_bytes(), &data);
        let e = apply_bytes(&n, &b, &Options::default()).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    // A downgrade: the new (lower) entry counts, the running one is marked bad.
    let opts = Options {
        allow_downgrade: true,
    };
    let done = apply_bytes(&n, &bundle("1.5", &p, &key(1)), &opts).unwrap();
    assert!(done.downgrade);
    assert_eq!(
        entries(&n),
        ["rke2-node-1.5-a+3.efi", "rke2-node-2.0-b+0.efi"]
    );
    // Running from a slot that is not blessed yet: refused.
    let u = node(
        'b',
        "2.0",
        &["rke2-node-2.0-b+2-1.efi", "rke2-node-1.0-a.efi"],
    );
    let e = apply_bytes(&u, &bundle("3.0", &p, &key(1)), &Options::default()).unwrap_err();
    assert!(e.contains("not blessed yet"), "{e}");
    // Not a disk boot.
    fs::write(
        &u.roots.boot_info,
        r#"{"source":"iso","slot":"a","rootHash":"ab"}"#,
    )
    .unwrap();
    let e = apply_bytes(&u, &bundle("3.0", &p, &key(1)), &Options::default()).unwrap_err();
    assert!(e.contains("install it to a disk first"), "{e}");
}

#[test]
fn a_power_cut_while_writing_leaves_the_old_slot_and_a_second_apply_succeeds() {
    if !prereq() {
        return;
    }
    let t = tmp();
    let p = parts(t.path());
    let n = node(
        'a',
        "1.0.0",
        &["rke2-node-1.0.0-a.efi", "rke2-node-0.9-b.efi"],
    );
    let b = bundle("1.1.0", &p, &key(1));
    // The stream stops in the middle of root.img (a cut connection / power cut mid-write).
    let e = apply_bytes(&n, &b[..b.len() - 300_000], &Options::default()).unwrap_err();
    assert!(e.contains("root.img"), "{e}");
    assert_eq!(entries(&n), ["rke2-node-1.0.0-a.efi"]);
    // A real power cut leaves `writing`; the next boot's health run makes it `interrupted`.
    state::update(&n.roots.state, |s| {
        s.last.as_mut().unwrap().result = "writing".into()
    })
    .unwrap();
    let mut s = state::load(&n.roots.state).unwrap();
    health::reconcile(&mut s, 'a', &esp::list(&n.roots.esp, IMAGE).unwrap());
    assert_eq!(s.last.as_ref().unwrap().result, "interrupted");
    apply_bytes(&n, &b, &Options::default()).unwrap();
    assert_eq!(
        entries(&n),
        ["rke2-node-1.0.0-a.efi", "rke2-node-1.1.0-b+3.efi"]
    );
}

#[test]
fn rollback_needs_a_good_other_slot() {
    let n = node(
        'b',
        "2.0",
        &["rke2-node-2.0-b.efi", "rke2-node-1.0-a+2.efi"],
    );
    let e = rollback::rollback(&n.roots).unwrap_err();
    assert!(e.contains("pending"), "{e}");
    let n = node(
        'b',
        "2.0",
        &["rke2-node-2.0-b.efi", "rke2-node-1.0-a+0-3.efi"],
    );
    let e = rollback::rollback(&n.roots).unwrap_err();
    assert!(e.contains("marked bad"), "{e}");
    let n = node('b', "2.0", &["rke2-node-2.0-b.efi"]);
    let e = rollback::rollback(&n.roots).unwrap_err();
    assert!(e.contains("no boot entry"), "{e}");
    let n = node('b', "2.0", &["rke2-node-2.0-b.efi", "rke2-node-1.0-a.efi"]);
    let m = rollback::rollback(&n.roots).unwrap();
    assert!(m.contains("reboot to boot slot a (1.0)"), "{m}");
    assert_eq!(
        entries(&n),
        ["rke2-node-1.0-a.efi", "rke2-node-2.0-b+0.efi"]
    );
    let l = state::load(&n.roots.state).unwrap().last.unwrap();
    assert_eq!(
        (l.result.as_str(), l.reason.as_str()),
        ("rolled-back", "by operator")
    );
}

fn pending_to_b() -> State {
    State {
        last: Some(Record {
            from_slot: "a".into(),
            from_version: "1.0".into(),
            to_slot: "b".into(),
            to_version: "1.1".into(),
            result: "pending".into(),
            reason: String::new(),
            tries: 3,
        }),
        ..Default::default()
    }
}

fn parse(files: &[&str]) -> Vec<Entry> {
    files
        .iter()
        .filter_map(|f| Entry::parse(IMAGE, f))
        .collect()
}

#[test]
fn reconciles_a_fallback_with_its_reason() {
    let bad_b = parse(&["rke2-node-1.0-a.efi", "rke2-node-1.1-b+0-3.efi"]);
    let mut s = pending_to_b();
    health::reconcile(&mut s, 'a', &bad_b);
    let l = s.last.as_ref().unwrap();
    assert_eq!(l.result, "rolled-back");
    assert_eq!(
        l.reason,
        "slot b (1.1) never reached its health check (it failed to boot 3 times)"
    );
    let mut s = pending_to_b();
    s.health.insert(
        "b".into(),
        HealthReport {
            version: "1.1".into(),
            healthy: false,
            counted: true,
            reason: "rke2-server.service failed (exit-code)".into(),
        },
    );
    health::reconcile(&mut s, 'a', &bad_b);
    assert_eq!(
        s.last.unwrap().reason,
        "slot b (1.1) failed its health check: rke2-server.service failed (exit-code)"
    );
    // Still counting (not rebooted yet), or running the new slot: nothing changes.
    for (slot, files) in [
        ('a', ["rke2-node-1.0-a.efi", "rke2-node-1.1-b+2-1.efi"]),
        ('b', ["rke2-node-1.0-a.efi", "rke2-node-1.1-b+2-1.efi"]),
    ] {
        let mut s = pending_to_b();
        health::reconcile(&mut s, slot, &parse(&files));
        assert_eq!(s, pending_to_b());
    }
}

/// A scripted system: unit states in order of polls, readyz answers.
struct Fake {
    enabled: Vec<&'static str>,
    states: std::cell::RefCell<Vec<UnitState>>,
    ready: bool,
    t: std::cell::Cell<u64>,
}

impl System for Fake {
    fn is_enabled(&self, unit: &str) -> bool {
        self.enabled.contains(&unit)
    }
    fn unit_state(&self, _: &str) -> UnitState {
        let mut s = self.states.borrow_mut();
        if s.len() > 1 {
            s.remove(0)
        } else {
            s[0].clone()
        }
    }
    fn readyz(&self, _: &Path) -> Result<(), String> {
        if self.ready {
            Ok(())
        } else {
            Err("HTTP 503".into())
        }
    }
    fn elapsed(&self) -> Duration {
        Duration::from_secs(self.t.get())
    }
    fn sleep(&self, d: Duration) {
        self.t.set(self.t.get() + d.as_secs());
    }
}

fn fake(enabled: &[&'static str], states: Vec<UnitState>, ready: bool) -> Fake {
    Fake {
        enabled: enabled.to_vec(),
        states: std::cell::RefCell::new(states),
        ready,
        t: Default::default(),
    }
}

fn stamped(root: &Path) {
    fs::create_dir_all(root.join("var/lib/rke2-firstboot")).unwrap();
    fs::write(root.join("var/lib/rke2-firstboot/done"), "ok\n").unwrap();
}

#[test]
fn health_decisions() {
    let d = tmp();
    let root = d.path();
    let deadline = Duration::from_secs(10);
    let other = |s: &str| UnitState::Other(s.into());
    // The agent has not finished.
    let e = health::check(root, &fake(&[], vec![other("x")], true), deadline).unwrap_err();
    assert!(e.contains("first-boot agent to finish"), "{e}");
    stamped(root);
    // No role: healthy at once.
    let ok = health::check(root, &fake(&[], vec![other("x")], false), deadline).unwrap();
    assert!(ok.contains("no RKE2 role"), "{ok}");
    // Server: activating, then active, then readyz.
    let s = fake(
        &[health::SERVER_UNIT],
        vec![other("activating"), UnitState::Active],
        true,
    );
    assert!(health::check(root, &s, deadline)
        .unwrap()
        .contains("readyz"));
    assert_eq!(s.t.get(), 2);
    // Server active but never ready: the deadline, with what it waited for.
    let s = fake(&[health::SERVER_UNIT], vec![UnitState::Active], false);
    let e = health::check(root, &s, deadline).unwrap_err();
    assert!(
        e.contains("not healthy after 10 s") && e.contains("HTTP 503"),
        "{e}"
    );
    // A failed role unit fails at once.
    let s = fake(
        &[health::AGENT_UNIT],
        vec![UnitState::Failed("exit-code".into())],
        true,
    );
    let e = health::check(root, &s, deadline).unwrap_err();
    assert_eq!(e, "rke2-agent.service failed (exit-code)");
    assert_eq!(s.t.get(), 0);
    // Agent: active, then its join recorded.
    let s = fake(&[health::AGENT_UNIT], vec![UnitState::Active], true);
    assert!(health::check(root, &s, deadline).is_err());
    fs::create_dir_all(root.join("var/lib/rancher/rke2/agent")).unwrap();
    fs::write(root.join("var/lib/rancher/rke2/agent/joined"), "x").unwrap();
    let s = fake(&[health::AGENT_UNIT], vec![UnitState::Active], true);
    assert!(health::check(root, &s, deadline)
        .unwrap()
        .contains("joined"));
    // The agent's failure record fails at once.
    fs::write(root.join("var/lib/rke2-firstboot/failed"), "bad config\n").unwrap();
    let e = health::check(root, &fake(&[], vec![other("x")], true), deadline).unwrap_err();
    assert_eq!(e, "the first-boot agent failed: bad config");
}

#[test]
fn health_run_blesses_and_fails_only_counted_boots() {
    // Booted the new slot b (counted): healthy -> the record says good.
    let n = node(
        'b',
        "1.1",
        &["rke2-node-1.0-a.efi", "rke2-node-1.1-b+2-1.efi"],
    );
    state::save(&n.roots.state, &pending_to_b()).unwrap();
    stamped(&n.roots.root);
    fs::create_dir_all(&n.roots.efivars).unwrap();
    fs::write(n.roots.efivars.join(BOOT_COUNT_EFIVAR), "x").unwrap();
    let mut out = Vec::new();
    let ok = health::run(
        &n.roots,
        &fake(&[], vec![UnitState::Active], true),
        &mut |m| out.push(m.to_string()),
    )
    .unwrap();
    assert!(ok);
    let s = state::load(&n.roots.state).unwrap();
    assert_eq!(s.last.unwrap().result, "good");
    assert!(s.health["b"].healthy && s.health["b"].counted);
    // Unhealthy on a counted boot: an error (exit 1 -> reboot), the report recorded.
    let n = node(
        'b',
        "1.1",
        &["rke2-node-1.0-a.efi", "rke2-node-1.1-b+2-1.efi"],
    );
    state::save(&n.roots.state, &pending_to_b()).unwrap();
    stamped(&n.roots.root);
    fs::create_dir_all(&n.roots.efivars).unwrap();
    fs::write(n.roots.efivars.join(BOOT_COUNT_EFIVAR), "x").unwrap();
    let sys = fake(
        &[health::SERVER_UNIT],
        vec![UnitState::Failed("signal".into())],
        true,
    );
    let e = health::run(&n.roots, &sys, &mut |_| {}).unwrap_err();
    assert!(
        e.contains("UNHEALTHY: rke2-server.service failed (signal)"),
        "{e}"
    );
    let s = state::load(&n.roots.state).unwrap();
    assert_eq!(s.last.as_ref().unwrap().result, "pending");
    assert!(!s.health["b"].healthy);
    // The same without the efivar (uncounted): recorded, no failure.
    fs::remove_file(n.roots.efivars.join(BOOT_COUNT_EFIVAR)).unwrap();
    assert!(!health::run(&n.roots, &sys, &mut |_| {}).unwrap());
    // Then slot b used up its tries and a booted again: rolled back with b's reason.
    fs::write(
        &n.roots.boot_info,
        fs::read_to_string(&n.roots.boot_info)
            .unwrap()
            .replace(r#""slot":"b""#, r#""slot":"a""#),
    )
    .unwrap();
    let dir = n.roots.esp.join("EFI/Linux");
    fs::rename(
        dir.join("rke2-node-1.1-b+2-1.efi"),
        dir.join("rke2-node-1.1-b+0-3.efi"),
    )
    .unwrap();
    fs::write(
        n.roots.root.join("usr/share/rke2-image/image-info.json"),
        format!(r#"{{"name":"{IMAGE}","version":"1.0","prettyName":"x","epoch":1}}"#),
    )
    .unwrap();
    let mut out = Vec::new();
    assert!(health::run(
        &n.roots,
        &fake(&[], vec![UnitState::Active], true),
        &mut |m| out.push(m.to_string())
    )
    .unwrap());
    let l = state::load(&n.roots.state).unwrap().last.unwrap();
    assert_eq!(l.result, "rolled-back");
    assert_eq!(
        l.reason,
        "slot b (1.1) failed its health check: rke2-server.service failed (signal)"
    );
    assert!(out[0].contains("rolled back"), "{out:?}");
}

#[test]
fn health_never_fails_an_uncounted_boot_even_without_boot_facts() {
    let n = node('a', "1.0", &["rke2-node-1.0-a.efi"]);
    fs::remove_file(&n.roots.boot_info).unwrap();
    let mut out = Vec::new();
    let r = health::run(
        &n.roots,
        &fake(&[], vec![UnitState::Active], true),
        &mut |m| out.push(m.to_string()),
    );
    assert_eq!(r, Ok(false));
    assert!(
        out[0].contains("boot.json") && out[0].contains("no reboot"),
        "{out:?}"
    );
    fs::create_dir_all(&n.roots.efivars).unwrap();
    fs::write(n.roots.efivars.join(BOOT_COUNT_EFIVAR), "x").unwrap();
    let r = health::run(
        &n.roots,
        &fake(&[], vec![UnitState::Active], true),
        &mut |_| {},
    );
    assert!(r.is_err());
}

/// An HTTPS server on 127.0.0.1 (certificate from a fresh rcgen CA, whose PEM is returned)
/// answering every request with `body()` (its first `cut` bytes only, when given, then the
/// connection drops: a download cut short).
fn https(body: fn() -> Box<dyn std::io::Read + Send>, len: u64, cut: Option<u64>) -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::Write;
    use std::sync::Arc;
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let cfg = Arc::new(cfg);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(tcp) = conn else { continue };
            let mut s =
                rustls::StreamOwned::new(rustls::ServerConnection::new(cfg.clone()).unwrap(), tcp);
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(head.as_bytes());
            let mut r = std::io::Read::take(body(), cut.unwrap_or(len));
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.flush();
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    (port, ca.pem())
}

/// 64 MiB of a fixed pattern, generated as it streams.
fn big() -> Box<dyn std::io::Read + Send> {
    Box::new(std::io::Read::take(std::io::repeat(0x5a), 64 << 20))
}

#[test]
fn streams_a_large_body_over_https_against_a_ca_file() {
    use rke2_firstboot::update::source;
    let (port, pem) = https(big, 64 << 20, None);
    let d = tmp();
    let ca = d.path().join("ca.pem");
    fs::write(&ca, pem).unwrap();
    let url = format!("https://127.0.0.1:{port}/node-2.0.update");
    let mut r = source::open(&url, Some(&ca)).unwrap();
    let mut h = Sha256::new();
    let n = std::io::copy(&mut r, &mut h).unwrap();
    assert_eq!(n, 64 << 20);
    let mut want = Sha256::new();
    std::io::copy(&mut big(), &mut want).unwrap();
    assert_eq!(h.finalize(), want.finalize());
    // Another CA: refused.
    let other = d.path().join("other.pem");
    let (_, pem2) = https(big, 1, None);
    fs::write(&other, pem2).unwrap();
    let e = source::open(&url, Some(&other)).err().unwrap();
    assert!(e.contains("TLS"), "{e}");
    // Cut short: an error, not a short body.
    let (port, pem) = https(big, 64 << 20, Some(1 << 20));
    fs::write(&ca, pem).unwrap();
    let url = format!("https://127.0.0.1:{port}/node-2.0.update");
    let mut r = source::open(&url, Some(&ca)).unwrap();
    let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("bytes before the end"), "{e}");
}

#[test]
fn the_command_answers_as_rke2_update_and_as_a_subcommand() {
    let n = node(
        'a',
        "1.0.0",
        &["rke2-node-1.0.0-a.efi", "rke2-node-1.1.0-b+2-1.efi"],
    );
    let d = tmp();
    let link = d.path().join("rke2-update");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_rke2-firstboot"), &link).unwrap();
    let root = n.roots.root.to_str().unwrap();
    let out = Command::new(&link)
        .args(["status", "--json", "--root", root])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["slots"][1]["entry"], "rke2-node-1.1.0-b+2-1.efi");
    assert_eq!(j["slots"][1]["triesLeft"], 2);
    let out = Command::new(env!("CARGO_BIN_EXE_rke2-firstboot"))
        .args(["update", "rollback", "--root", root])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.starts_with("rke2-update: error: slot b (1.1.0) is pending"),
        "{e}"
    );
}

#[test]
fn health_unit_passes_systemd_analyze_and_is_enabled_both_ways() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/firstboot/usr/lib/systemd/system");
    let unit = dir.join("rke2-update-health.service");
    let text = fs::read_to_string(&unit).unwrap();
    for l in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Before=boot-complete.target",
        "FailureAction=reboot",
        "ExecStart=/usr/bin/rke2-update health",
        "After=rke2-firstboot.service rke2-server.service rke2-agent.service network-online.target",
    ] {
        assert!(text.lines().any(|x| x == l), "unit lacks {l}");
    }
    // multi-user.target wants it (and so orders after it): it must not order after that target.
    assert!(!text
        .lines()
        .any(|l| l.starts_with("After=") && l.contains("multi-user")));
    for link in [
        "boot-complete.target.requires/rke2-update-health.service",
        "multi-user.target.wants/rke2-update-health.service",
    ] {
        assert_eq!(
            fs::read_link(dir.join(link)).unwrap(),
            Path::new("../rke2-update-health.service"),
            "{link}"
        );
    }
    assert_eq!(
        fs::read_link(dir.join("../../../bin/rke2-update")).unwrap(),
        Path::new("rke2-firstboot")
    );
    if !rke2_testsupport::prereq::program("systemd-analyze", "systemd") {
        return;
    }
    // With the overlay's units on the unit path, so the ordering against the first-boot agent
    // is checked too (a cycle would be reported).
    let o = Command::new("systemd-analyze")
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .args(["verify", "--man=no"])
        .arg(&unit)
        .arg(dir.join("rke2-firstboot.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let bad: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .collect();
    assert!(bad.is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn an_uncounted_boot_takes_one_look_without_waiting() {
    let n = node('a', "1.0", &["rke2-node-1.0-a.efi"]);
    stamped(&n.roots.root);
    let sys = fake(
        &[health::SERVER_UNIT],
        vec![UnitState::Other("activating".into())],
        true,
    );
    assert!(!health::run(&n.roots, &sys, &mut |_| {}).unwrap());
    assert_eq!(sys.t.get(), 0, "waited on an uncounted boot");
    let h = &state::load(&n.roots.state).unwrap().health["a"];
    assert!(
        !h.healthy && !h.counted && h.reason.contains("activating"),
        "{h:?}"
    );
    // Counted: it waits for the policy's deadline (5 s in these nodes).
    fs::create_dir_all(&n.roots.efivars).unwrap();
    fs::write(n.roots.efivars.join(BOOT_COUNT_EFIVAR), "x").unwrap();
    assert!(health::run(&n.roots, &sys, &mut |_| {}).is_err());
    assert!(sys.t.get() >= 5);
}
