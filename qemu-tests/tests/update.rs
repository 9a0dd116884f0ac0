//! A/B updates (issue 13), booted: a v1 disk image, update bundles of v2 and of a v3 whose RKE2
//! server unit fails, and bundles the node must refuse (another key, tampered, a downgrade,
//! another image's). The bundles reach the guest as read-only virtio disks with a serial
//! (`/dev/disk/by-id/virtio-<serial>`); the probe runs `rke2-update` as the knob
//! `update-plan` says, one step per boot and image version (see the probe), and reports.
//!
//! VM time is what CI pays for, so one machine (one QEMU process, `reboot: true`, the same
//! firmware variables across reboots) goes through as many boots as a story needs.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rke2_qemu_tests::built::{self, Image, Variant};
use rke2_qemu_tests::cluster::{self, Delivery, Node, NodeSpec, Report};
use rke2_qemu_tests::vm::{accel, Boot, Config, NamedDrive};

const RKE2_VERSION: &str = "v1.31.5+rke2r1";
/// One boot under TCG with the stand-in supervisor takes ~1-2 min; stories take several.
const BOOT: Duration = Duration::from_secs(900);
/// Boot tries a new slot gets in these images (the definition's `update.tries`): fewer than
/// the default 3 to spend less VM time on the failing slots.
const TRIES: u32 = 2;
/// How long the health gate waits on a new slot here (the definition's
/// `update.healthTimeoutSeconds`).
const HEALTH_SECS: u64 = 120;
/// One VM at a time in this process (2 shared cores).
static VM: Mutex<()> = Mutex::new(());

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("update")
}

/// Everything the stories boot or hand to the guest.
struct Built {
    v1: Image,
    /// `qemu-test-1.update` (the downgrade on a v2 node).
    v1_bundle: PathBuf,
    v2: PathBuf,
    v3_broken: PathBuf,
    other_key: PathBuf,
    other_image: PathBuf,
    tampered: PathBuf,
}

fn gen_key(path: &Path) {
    let _ = std::fs::remove_file(path);
    built::run(
        std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(path),
    )
    .unwrap();
}

/// The definition sections every build here shares: the RKE2 payload, the signing key and the
/// update policy.
fn sections(payload: &str, key: &Path) -> String {
    format!(
        "{payload}signing:\n  key: {}\nupdate:\n  tries: {TRIES}\n  healthTimeoutSeconds: {HEALTH_SECS}\n",
        key.display()
    )
}

fn bundle_of(published: &[PathBuf]) -> PathBuf {
    built::published_with(published, "update")
        .unwrap_or_else(|| panic!("the build published no .update: {published:?}"))
}

/// Byte offset and size of member `name`'s data in a ustar archive.
fn tar_member(bundle: &Path, name: &str) -> (u64, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(bundle).unwrap();
    let mut off = 0u64;
    loop {
        let mut h = [0u8; 512];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut h).unwrap();
        assert!(
            h.iter().any(|b| *b != 0),
            "{name} not in {}",
            bundle.display()
        );
        let n = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_field = String::from_utf8_lossy(&h[124..136]);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap();
        if n == name {
            return (off + 512, size);
        }
        off += 512 + size.div_ceil(512) * 512;
    }
}

/// The image name of the bundle derived from v2 for another image (as long as `qemu-test`, so
/// update.json keeps its size and the tar its layout).
const OTHER_IMAGE: &str = "other-img";

/// Copies bundle `src` to `dst`, optionally claiming image `rename` in update.json, and signs
/// update.json again with `key` (`openssl pkeyutl -sign -rawin`, ed25519), in place.
fn derive(src: &Path, dst: &Path, key: &Path, rename: Option<&str>) {
    use rke2_image_contract::update::{UpdateInfo, INFO, SIGNATURE};
    use std::io::{Seek, SeekFrom, Write};
    std::fs::copy(src, dst).unwrap();
    rke2_testsupport::scratch::remove_at_exit(dst);
    let bytes = std::fs::read(dst).unwrap();
    let (off, len) = tar_member(dst, INFO);
    let mut info = bytes[off as usize..(off + len) as usize].to_vec();
    if let Some(name) = rename {
        let from = b"\"qemu-test\"";
        let to = format!("\"{name}\"");
        assert_eq!(from.len(), to.len());
        let at = info.windows(from.len()).position(|w| w == from).unwrap();
        info[at..at + from.len()].copy_from_slice(to.as_bytes());
        let parsed: UpdateInfo = serde_json::from_slice(&info).unwrap();
        assert_eq!(parsed.image, name, "the rename hit the image field");
    }
    let info_file = dst.with_extension("json");
    let sig_file = dst.with_extension("sig");
    std::fs::write(&info_file, &info).unwrap();
    built::run(
        std::process::Command::new("openssl")
            .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
            .arg(key)
            .arg("-in")
            .arg(&info_file)
            .arg("-out")
            .arg(&sig_file),
    )
    .unwrap();
    let sig = std::fs::read(&sig_file).unwrap();
    let (sig_off, sig_len) = tar_member(dst, SIGNATURE);
    assert_eq!(sig.len() as u64, sig_len);
    let mut f = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&info).unwrap();
    f.seek(SeekFrom::Start(sig_off)).unwrap();
    f.write_all(&sig).unwrap();
    let _ = std::fs::remove_file(info_file);
    let _ = std::fs::remove_file(sig_file);
}

/// Builds once per test binary: three builds (v1 raw + bundle, v2, v3 broken) and copies of v2
/// signed with another key, claiming another image, and tampered.
fn built() -> Option<&'static Built> {
    static B: OnceLock<Built> = OnceLock::new();
    let (base, programs) = rke2_qemu_tests::test_inputs()?;
    if !rke2_testsupport::prereq::program("openssl", "openssl") {
        return None;
    }
    Some(B.get_or_init(|| {
        let w = work_dir();
        let _ = std::fs::remove_dir_all(&w);
        std::fs::create_dir_all(&w).unwrap();
        rke2_testsupport::scratch::remove_at_exit(w.join("release"));
        let start = std::time::Instant::now();
        let key = w.join("signing.key");
        let other = w.join("other.key");
        gen_key(&key);
        gen_key(&other);
        let payload = cluster::payload_release(&w, RKE2_VERSION).unwrap();
        let variant = |name: &str, version: &str| Variant {
            name: name.into(),
            version: version.into(),
            overlays: Vec::new(),
        };
        let build = |dir: &str, v: &Variant, key: &Path, formats: &str| {
            built::build_published(&base, &programs, &w.join(dir), v, &sections(&payload, key), formats)
                .unwrap_or_else(|e| panic!("building {dir}: {e:#}"))
        };
        let v1v = variant("qemu-test", "1");
        let p1 = build("v1", &v1v, &key, "raw,update");
        let v1 = built::image_from(&w.join("v1"), &v1v, &p1).unwrap();
        let v2 = bundle_of(&build("v2", &variant("qemu-test", "2"), &key, "update"));
        // v3: the server unit fails on start and is not restarted.
        let broken = w.join("broken-overlay");
        let dropin = broken.join("usr/lib/systemd/system/rke2-server.service.d");
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::write(
            dropin.join("90-rke2-test-broken.conf"),
            "# Test-only: v3 of the update tests, whose server never starts.\n[Service]\nExecStartPre=/bin/false\nRestart=no\n",
        )
        .unwrap();
        let mut v3v = variant("qemu-test", "3");
        v3v.overlays.push(broken);
        let v3_broken = bundle_of(&build("v3", &v3v, &key, "update"));
        // Refused for what update.json says, so derived from v2 rather than built: v2 re-signed
        // with another key, and v2 claiming another image, properly signed with the trusted key.
        let other_key = w.join("other-key.update");
        derive(&v2, &other_key, &other, None);
        let other_image = w.join("other-image.update");
        derive(&v2, &other_image, &key, Some(OTHER_IMAGE));
        // A copy of v3 (newer than the v2 node it is applied on, so the version check passes and
        // the node starts writing) with one byte of root.img's data flipped.
        let tampered = w.join("tampered.update");
        std::fs::copy(&v3_broken, &tampered).unwrap();
        rke2_testsupport::scratch::remove_at_exit(&tampered);
        let (off, size) = tar_member(&tampered, rke2_image_contract::update::ROOT);
        {
            use std::io::{Read, Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&tampered).unwrap();
            let at = off + size / 2;
            let mut b = [0u8; 1];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut b).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[b[0] ^ 0x01]).unwrap();
        }
        eprintln!("built the update images in {:.1} s", start.elapsed().as_secs_f64());
        Built {
            v1_bundle: bundle_of(&p1),
            v1,
            v2,
            v3_broken,
            other_key,
            other_image,
            tampered,
        }
    }))
}

fn dir(name: &str) -> PathBuf {
    let d = work_dir().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ro(serial: &str, path: &Path) -> NamedDrive {
    NamedDrive {
        serial: serial.into(),
        path: path.into(),
        writable: false,
    }
}

/// The native configuration of a single server (the initializer), matched by MAC.
const SERVER_MAC: &str = "52:54:00:e3:01:01";
fn server_config() -> Vec<u8> {
    format!(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  token: update-test-password-4c1d\nnodes:\n  - hostname: cp-1\n    match: {{ mac: \"{SERVER_MAC}\" }}\n    role: server\n    initializer: true\n    address: 10.0.0.11\n    network:\n      addresses: [10.0.0.11/24]\n"
    )
    .into_bytes()
}

/// Starts `disk` (a qcow2 overlay) with `drives`, the plan, and `config`; reboots restart it.
fn start(
    work: &Path,
    name: &str,
    disk: &Path,
    drives: Vec<NamedDrive>,
    plan: &str,
    config: Delivery,
    nics: Vec<rke2_qemu_tests::vm::Nic>,
) -> Node {
    let mut cfg = Config::new(disk, Boot::Uefi);
    cfg.reboot = true;
    cfg.named_drives = drives;
    let spec = NodeSpec {
        memory_mib: 1536,
        cpus: 1,
        ..NodeSpec::new(name, nics, config)
    }
    .knob("update-plan", plan);
    Node::start(cfg, work, &spec).unwrap()
}

/// Waits for probe fact `key` (`RKE2-PROBE key=`); fails with the console tail.
fn wait_fact(node: &mut Node, key: &str, forbidden: &[&str], timeout: Duration) -> Report {
    let marker = format!("RKE2-PROBE {key}=");
    if let Err(e) = node.vm.wait_line(&marker, forbidden, timeout) {
        panic!("{}: waiting for {key}: {e}", node.name);
    }
    node.report()
}

/// A fact holding `rke2-update status --json` (its lines joined).
fn status(r: &Report, key: &str) -> serde_json::Value {
    let t = r.fact(key);
    serde_json::from_str(t).unwrap_or_else(|e| panic!("{key} is not status JSON ({e}): {t}"))
}

/// `slots[]` of a status by slot letter.
fn slot<'a>(st: &'a serde_json::Value, s: &str) -> &'a serde_json::Value {
    st["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["slot"] == s))
        .unwrap_or_else(|| panic!("no slot {s} in {st}"))
}

fn entries(r: &Report, key: &str) -> Vec<String> {
    let mut v: Vec<String> = r.fact(key).split_whitespace().map(String::from).collect();
    v.sort();
    v
}

fn record(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("update-timings.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The main story on one machine (a server):
/// 1. v1 boots and configures; the probe times `dd` of v2's root bytes to a scratch disk (the
///    baseline), then `apply` of v2, then reboots.
/// 2. v2 runs, blessed, `/etc` and `/var` kept; bundles under another key, tampered, a
///    downgrade (v1) and another image's are refused with nothing activated; then v3 (whose
///    server unit fails) is applied with `--reboot`.
/// 3. v3 fails its health gate on every try; systemd-boot falls back to v2, whose status names
///    the rollback and its reason.
#[test]
fn upgrade_refusals_then_rollback_on_failed_health() {
    let b = rke2_qemu_tests::need!(built());
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let w = dir("upgrade");
    let disk = w.join("cp-1.qcow2");
    built::overlay_disk(&b.v1.disk, &disk, None).unwrap();
    // The disks go (a slot's worth of writes each); consoles and knobs stay for a look.
    rke2_testsupport::scratch::remove_at_exit(&disk);
    let (root_off, root_len) = tar_member(&b.v2, rke2_image_contract::update::ROOT);
    let scratch = w.join("scratch.qcow2");
    built::run(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&scratch)
            .arg(root_len.div_ceil(1 << 20).max(1).to_string() + "M"),
    )
    .unwrap();
    rke2_testsupport::scratch::remove_at_exit(&scratch);
    let dev = |s: &str| format!("/dev/disk/by-id/virtio-{s}");
    let plan = format!(
        "1: dd v2 {root_off} {root_len}; apply {v2}; ls; reboot\n\
         2: apply {ok}; apply {tp}; apply {v1}; apply {oi}; ls; status --json; apply {v3} --reboot\n\
         2: status --json; off\n",
        v2 = dev("v2"),
        ok = dev("otherkey"),
        tp = dev("tampered"),
        v1 = dev("v1"),
        oi = dev("otherimage"),
        v3 = dev("v3"),
    );
    let drives = vec![
        ro("v1", &b.v1_bundle),
        ro("v2", &b.v2),
        ro("v3", &b.v3_broken),
        ro("otherkey", &b.other_key),
        ro("otherimage", &b.other_image),
        ro("tampered", &b.tampered),
        NamedDrive {
            serial: "scratch".into(),
            path: scratch.clone(),
            writable: true,
        },
    ];
    let nics = vec![rke2_qemu_tests::vm::Nic {
        mac: SERVER_MAC.into(),
        net: rke2_qemu_tests::vm::Net::User { forwards: vec![] },
    }];
    let mut node = start(
        &w,
        "cp-1",
        &disk,
        drives,
        &plan,
        Delivery::FwCfg(server_config()),
        nics,
    );
    let fatal = cluster::FATAL;

    // 1. v1, configured as a server, applies v2.
    let r = wait_fact(&mut node, "s1.rebooting", &fatal, BOOT);
    assert_eq!(r.fact("s1.version"), "1");
    assert_eq!(r.fact("s1.slot"), "a");
    assert_eq!(r.fact("s1.role_active"), "active", "{:?}", r.facts);
    assert_eq!(
        r.fact("s1.c1.rc"),
        "0",
        "dd baseline: {}",
        r.fact("s1.c1.out")
    );
    assert_eq!(r.fact("s1.c2.rc"), "0", "apply v2: {}", r.fact("s1.c2.out"));
    let staged = r.fact("s1.c3.out").to_string();
    assert!(staged.contains("qemu-test-1-a.efi"), "{staged}");
    assert!(
        staged.contains(&format!("qemu-test-2-b+{TRIES}.efi")),
        "the new slot's entry with {TRIES} tries: {staged}"
    );
    let dd_secs: f64 = r.fact("s1.c1.secs").parse().unwrap();
    let apply_secs: f64 = r.fact("s1.c2.secs").parse().unwrap();
    let reboot_at = node.vm.seen_at("RKE2-PROBE s1.rebooting=1").unwrap();

    // 2. v2 runs from slot b, blessed, with v1's /etc and /var. (The step ends in
    // `apply --reboot`, which cuts its last facts short: wait for the status before it.)
    let r = wait_fact(&mut node, "s2.c6.out", &fatal, BOOT);
    assert_eq!(r.fact("s2.version"), "2");
    assert_eq!(r.fact("s2.slot"), "b");
    assert_eq!(r.fact("s2.role_active"), "active");
    assert_eq!(
        r.fact("s2.counted"),
        "1",
        "v2's first boot is a counted one"
    );
    assert_eq!(r.fact("s2.health"), "active", "{:?}", r.facts);
    assert_eq!(r.fact("s2.bless"), "active", "{:?}", r.facts);
    assert_eq!(r.fact("s2.etc_counter"), "2", "/etc kept across the slots");
    assert_eq!(r.fact("s2.var_counter"), "2", "/var kept across the slots");
    let ready = node
        .vm
        .seen_after("rke2-standin: supervisor ready", reboot_at)
        .expect("v2's supervisor ready on the console");
    // Before the refusals: v2 good and running in b, v1 good in a, the update recorded good.
    let st = status(&r, "s2.status");
    assert_eq!(st["running"]["slot"], "b", "{st}");
    assert_eq!(st["running"]["version"], "2", "{st}");
    assert_eq!(slot(&st, "b")["state"], "good", "{st}");
    assert_eq!(slot(&st, "a")["version"], "1", "{st}");
    assert_eq!(slot(&st, "a")["state"], "good", "{st}");
    assert_eq!(st["last"]["result"], "good", "{st}");
    // Refusals: each non-zero with the reason, nothing activated.
    for (c, what, why) in [
        (1, "another key's bundle", "signed with another key"),
        (2, "a tampered bundle", "altered after signing"),
        (3, "a downgrade", "--allow-downgrade"),
        (4, "another image's bundle", OTHER_IMAGE),
    ] {
        let rc = r.fact(&format!("s2.c{c}.rc"));
        let out = r.fact(&format!("s2.c{c}.out"));
        assert_ne!(rc, "0", "{what} was accepted: {out}");
        assert!(
            out.contains(why),
            "{what}: the refusal should say {why:?}: {out}"
        );
    }
    // The tampered bundle got as far as writing slot a before its root.img failed its
    // sha256, so v1's entry there is gone (its partitions were overwritten); nothing new is
    // bootable and v2 stays the only entry.
    assert_eq!(
        r.fact("s2.c5.out").split_whitespace().collect::<Vec<_>>(),
        ["qemu-test-2-b.efi"],
        "after the refusals"
    );
    let st = status(&r, "s2.c6.out");
    assert_eq!(st["running"]["slot"], "b", "{st}");
    assert_eq!(slot(&st, "a")["state"], "empty", "{st}");
    assert_eq!(st["last"]["result"], "failed", "{st}");
    assert!(
        st["last"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("root.img"),
        "{st}"
    );
    assert_eq!(
        r.fact("s2.c7.start"),
        format!("apply {} --reboot", dev("v3"))
    );

    // 3. v3 fails its health gate on each try; v2 boots again and says so.
    let r = wait_fact(
        &mut node,
        "s3.after.var_counter",
        &fatal,
        BOOT * (TRIES + 2),
    );
    assert_eq!(r.fact("s3.version"), "2");
    assert_eq!(r.fact("s3.slot"), "b");
    let st = status(&r, "s3.c1.out");
    assert_eq!(st["last"]["result"], "rolled-back", "{st}");
    assert_eq!(st["last"]["toVersion"], "3", "{st}");
    let reason = st["last"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("health check") && reason.contains("rke2-server"),
        "the reason names the gate and the unit: {st}"
    );
    assert_eq!(slot(&st, "a")["state"], "bad", "{st}");
    let es = entries(&r, "s3.entries");
    assert!(es.contains(&"qemu-test-2-b.efi".to_string()), "{es:?}");
    assert!(
        es.iter().any(|e| e.starts_with("qemu-test-3-a+0")),
        "v3's entry out of tries: {es:?}"
    );
    // Each try of v3 was a boot of slot a that ended in the health gate's reboot.
    let v3_boots = r.console.matches("rke2.slot=a").count();
    eprintln!("slot-a command lines seen: {v3_boots}");
    node.vm.wait_exit(Duration::from_secs(300)).unwrap();

    record(&format!(
        "UPDATE ({}): root {root_len} bytes; apply {apply_secs:.1} s vs dd {dd_secs:.1} s; \
         downtime reboot -> supervisor ready on the new slot {:.1} s",
        accel(),
        (ready - reboot_at).as_secs_f64()
    ));
}

/// The new slot cannot even boot (its verity hash device zeroed after the apply): rke2-init
/// fails on it and reboots, each try counted, until systemd-boot falls back to v1, which
/// records the rollback. No role: the story is the boot chain's.
#[test]
fn new_slot_that_cannot_boot_falls_back() {
    let b = rke2_qemu_tests::need!(built());
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let w = dir("unbootable");
    let disk = w.join("n.qcow2");
    built::overlay_disk(&b.v1.disk, &disk, None).unwrap();
    // The disks go (a slot's worth of writes each); consoles and knobs stay for a look.
    rke2_testsupport::scratch::remove_at_exit(&disk);
    let plan = "1: apply /dev/disk/by-id/virtio-v2; corrupt root-b-verity; reboot\n1: status --json; off\n";
    let mut node = start(
        &w,
        "n",
        &disk,
        vec![ro("v2", &b.v2)],
        plan,
        Delivery::None,
        vec![],
    );
    // rke2-init failing is the point here: only a panic ends the wait early.
    let r = wait_fact(&mut node, "s1.rebooting", &cluster::FATAL, BOOT);
    assert_eq!(r.fact("s1.c1.rc"), "0", "{}", r.fact("s1.c1.out"));
    assert_eq!(r.fact("s1.c2.rc"), "0", "{}", r.fact("s1.c2.out"));
    let r = wait_fact(
        &mut node,
        "s2.after.var_counter",
        &["Kernel panic"],
        BOOT * (TRIES + 2),
    );
    let fails = r.console.matches("rke2-init: FAILED").count();
    assert_eq!(fails as u32, TRIES, "one failed boot per try");
    assert_eq!(r.fact("s2.version"), "1");
    assert_eq!(r.fact("s2.slot"), "a");
    let st = status(&r, "s2.c1.out");
    assert_eq!(st["last"]["result"], "rolled-back", "{st}");
    let reason = st["last"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("never reached its health check"), "{st}");
    let es = entries(&r, "s2.entries");
    assert!(es.contains(&"qemu-test-1-a.efi".to_string()), "{es:?}");
    assert!(
        es.iter().any(|e| e.starts_with("qemu-test-2-b+0")),
        "{es:?}"
    );
    node.vm.wait_exit(Duration::from_secs(300)).unwrap();
}

/// Power cut while `apply` writes the inactive slot: the node boots the old slot, its status
/// says the update was interrupted, and a second `apply` succeeds.
#[test]
fn power_cut_while_writing_the_slot_then_apply_again() {
    let b = rke2_qemu_tests::need!(built());
    let _vm = VM.lock().unwrap_or_else(|e| e.into_inner());
    let w = dir("power-cut");
    let disk = w.join("n.qcow2");
    built::overlay_disk(&b.v1.disk, &disk, None).unwrap();
    // The disks go (a slot's worth of writes each); consoles and knobs stay for a look.
    rke2_testsupport::scratch::remove_at_exit(&disk);
    let v2 = "/dev/disk/by-id/virtio-v2";
    let plan = format!("1: cut {v2}\n1: status --json; apply {v2}; ls; off\n");
    let mut node = start(
        &w,
        "n",
        &disk,
        vec![ro("v2", &b.v2)],
        &plan,
        Delivery::None,
        vec![],
    );
    let r = wait_fact(&mut node, "s1.c1.cut_now", &cluster::FATAL, BOOT);
    assert_eq!(r.fact("s1.slot"), "a");
    node.vm.power_cut();
    drop(node);
    let mut node = start(
        &w,
        "n",
        &disk,
        vec![ro("v2", &b.v2)],
        &plan,
        Delivery::None,
        vec![],
    );
    let r = wait_fact(&mut node, "s2.after.var_counter", &cluster::FATAL, BOOT);
    assert_eq!(r.fact("s2.version"), "1");
    assert_eq!(r.fact("s2.slot"), "a");
    assert!(
        !r.fact("s2.entries").contains("qemu-test-2"),
        "nothing of the cut update is bootable: {}",
        r.fact("s2.entries")
    );
    let st = status(&r, "s2.c1.out");
    assert_eq!(st["last"]["result"], "interrupted", "{st}");
    assert_eq!(r.fact("s2.c2.rc"), "0", "{}", r.fact("s2.c2.out"));
    let es = r.fact("s2.c3.out");
    assert!(es.contains(&format!("qemu-test-2-b+{TRIES}.efi")), "{es}");
    node.vm.wait_exit(Duration::from_secs(300)).unwrap();
}
