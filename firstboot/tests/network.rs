//! Static node networking through `run` (apply hook before the join preflight, failures), the
//! test-only pause knob, and the rendered files under a real systemd-networkd.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::Fixed;
use rke2_firstboot::agent::{self, AgentError, RunEnv, RunOutcome};
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::network::Link;
use rke2_firstboot::preflight::Backoff;
use rke2_firstboot::render::Phase;

const NET_FILE: &str = "etc/systemd/network/10-rke2-firstboot.network";
const MAC: &str = "52:54:00:12:34:56";

/// A two-node cluster: this machine (by MAC) is the agent joining the initializer.
fn joining_agent(server_port: u16) -> Vec<u8> {
    format!(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  server: 127.0.0.1:{server_port}\n  token: \"K10{}::server:pw\"\nnodes:\n  - hostname: cp-1\n    match: {{ mac: \"52:54:00:00:00:01\" }}\n    role: server\n    initializer: true\n    address: 10.0.0.11\n  - hostname: w-1\n    match: {{ mac: \"{MAC}\" }}\n    role: agent\n    network:\n      addresses: [10.0.0.12/24]\n",
        "ab".repeat(32)
    )
    .into_bytes()
}

fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        deadline: Duration::from_millis(200),
        request_timeout: Duration::from_millis(200),
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn env(root: &Path, cfg: Vec<u8>, apply: Option<agent::NetworkApply>) -> RunEnv {
    RunEnv {
        root: root.to_path_buf(),
        sources: vec![Box::new(Fixed(cfg))],
        identity: Identity::from_args(&[&format!("mac={MAC}")]).unwrap(),
        preflight_backoff: Some(quick()),
        network_apply: apply,
        pause_before: None,
        relabel: None,
        live_cmdline: None,
    }
}

#[test]
fn network_is_applied_after_the_file_is_written_and_before_the_join_preflight() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let file = t.path().join(NET_FILE);
    let apply: agent::NetworkApply = Box::new(move |net, _status| {
        // The hook sees the file already written (the System phase ran and was flushed).
        let text = fs::read_to_string(&file).map_err(|e| e.to_string())?;
        c.lock().unwrap().push((net.link.clone(), text));
        Ok("eth0".into())
    });
    let mut log = Vec::new();
    // The initializer is not up: the preflight fails, after the network was applied.
    let e = agent::run(
        &env(t.path(), joining_agent(closed_port()), Some(apply)),
        &mut |m| log.push(m.to_string()),
    )
    .unwrap_err();
    assert!(matches!(e, AgentError::Preflight(_)), "{e}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, Link::Mac(MAC.into()));
    assert!(
        calls[0].1.contains(&format!("MACAddress={MAC}\n")),
        "{}",
        calls[0].1
    );
    let pos = |needle: &str| log.iter().position(|l| l.starts_with(needle));
    let net = pos(&format!("network: 10.0.0.12/24 on eth0 ({MAC})"));
    let pre = pos("join preflight against https://127.0.0.1:");
    assert!(net.is_some() && pre.is_some() && net < pre, "{log:#?}");
}

#[test]
fn failing_network_apply_fails_the_run_with_the_command_and_enables_nothing() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let apply: agent::NetworkApply = Box::new(|_, _| {
        Err(
            "`systemctl restart systemd-networkd.service` failed (exit status: 1): Job failed"
                .into(),
        )
    });
    let e = agent::run(
        &env(t.path(), joining_agent(closed_port()), Some(apply)),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "network: `systemctl restart systemd-networkd.service` failed (exit status: 1): Job failed"
    );
    assert!(!t.path().join("var/lib/rke2-firstboot/done").exists());
    assert!(!t
        .path()
        .join("etc/systemd/system/multi-user.target.wants/rke2-agent.service")
        .exists());
    let (ok, status) = agent::status(&Root::new(t.path())).unwrap();
    assert!(
        !ok && status.contains("systemctl restart systemd-networkd"),
        "{status}"
    );
}

#[test]
fn pause_knob_stops_at_the_top_of_the_phase_after_earlier_writes() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let root = t.path().to_path_buf();
    let (tx, rx) = mpsc::channel::<String>();
    // The paused run never returns: it lives in a thread the test leaves behind.
    std::thread::spawn(move || {
        let mut e = env(
            &root,
            "apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: s1\nnetwork:\n  interface: eth0\n  addresses: [10.0.0.5/24]\n"
            .as_bytes()
            .to_vec(),
            Some(Box::new(|_, _| Ok("eth0".into()))),
        );
        e.pause_before = Some(Phase::Enable);
        let _ = agent::run(&e, &mut |m| {
            let _ = tx.send(m.to_string());
        });
        let _ = tx.send("RETURNED".into());
    });
    let mut log = Vec::new();
    loop {
        let m = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let done = m == "test knob: pausing before phase enable";
        log.push(m);
        if done {
            break;
        }
    }
    // Still paused a moment later; the phases before `enable` are on disk, `enable` is not.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    let p = t.path();
    assert!(p.join("etc/rancher/rke2/config.yaml").is_file());
    assert!(p.join(NET_FILE).is_file());
    assert!(log
        .iter()
        .any(|l| l.starts_with("network: 10.0.0.5/24 on eth0")));
    assert!(
        !log.iter().any(|l| l == "enabling the RKE2 service"),
        "{log:#?}"
    );
    assert!(!p
        .join("etc/systemd/system/multi-user.target.wants/rke2-server.service")
        .exists());
    assert!(!p.join("var/lib/rke2-firstboot/done").exists());
}

#[test]
fn run_without_network_section_calls_no_hook() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let apply: agent::NetworkApply = Box::new(|_, _| panic!("no network section: not called"));
    let out = agent::run(
        &env(
            t.path(),
            b"apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: s1\n".to_vec(),
            Some(apply),
        ),
        &mut |_| {},
    )
    .unwrap();
    assert!(matches!(out, RunOutcome::Configured { .. }));
    assert!(!t.path().join(NET_FILE).exists());
}

// --- a real systemd-networkd (same major version as the image) in a private namespace ---

/// Runs `script` in new mount and network namespaces; None when this machine cannot (no
/// privileges, no networkd, no veth).
fn in_netns(script: &str) -> Option<String> {
    let networkd = Path::new("/usr/lib/systemd/systemd-networkd");
    if !networkd.exists() || !Path::new("/etc/systemd/network").is_dir() {
        rke2_testsupport::prereq::missing(
            "systemd-networkd and /etc/systemd/network (Debian package systemd)",
        );
        return None;
    }
    let probe = Command::new("unshare")
        .args([
            "-m",
            "-n",
            "sh",
            "-c",
            "ip link add v0 type veth peer name v1",
        ])
        .output()
        .map_err(|e| {
            rke2_testsupport::prereq::missing(format!("program `unshare` (util-linux): {e}"))
        })
        .ok()?;
    if !probe.status.success() {
        rke2_testsupport::prereq::missing(format!(
            "a network namespace with veth (unshare -n; ip link add type veth): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
        return None;
    }
    let o = Command::new("unshare")
        .args(["-m", "-n", "sh", "-ec", script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    Some(out)
}

/// Sets up networkd's directories in the namespace, with `conf` as /etc/systemd/network, and a
/// read-only sysfs of the namespace so networkd does not wait for udev.
fn networkd_script(conf: &Path, links: &str, wait_for: &str) -> String {
    format!(
        "mount --bind {conf} /etc/systemd/network\n\
         mount -t tmpfs tmpfs /run\n\
         mkdir -p /run/systemd/netif/links /run/systemd/netif/leases /run/systemd/netif/lldp\n\
         chown -R systemd-network: /run/systemd/netif 2>/dev/null || true\n\
         mount -t sysfs -o ro sysfs /sys\n\
         {links}\n\
         /usr/lib/systemd/systemd-networkd > /run/networkd.log 2>&1 &\n\
         pid=$!\n\
         i=0; while [ $i -lt 100 ] && ! {wait_for}; do sleep 0.1; i=$((i+1)); done\n\
         sleep 0.5\n\
         kill $pid; wait $pid || true\n\
         echo '== addr'; ip -o addr\n\
         echo '== link'; ip -o link\n\
         echo '== route'; ip route; ip -6 route\n\
         echo '== log'; cat /run/networkd.log\n",
        conf = conf.display()
    )
}

/// networkd's complaints about a file: unknown keys, unparsable values.
fn complaints<'a>(out: &'a str, file: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.contains(file) && !l.contains("Configuring with"))
        .collect()
}

fn render_network(cfg: &str, id: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let loaded = common::load(
        "x.yaml",
        cfg.as_bytes().to_vec(),
        &Identity::from_args(id).unwrap(),
    );
    agent::render_to(&Root::new(t.path()), &loaded, &mut |_| Ok(())).unwrap();
    t
}

fn conf_dir(rendered: &Path) -> tempfile::TempDir {
    let conf = tempfile::tempdir().unwrap();
    fs::copy(
        rendered.join(NET_FILE),
        conf.path().join("10-rke2-firstboot.network"),
    )
    .unwrap();
    // The image's DHCP default, as shipped.
    fs::copy(
        common::manifest_dir()
            .join("../overlays/base/usr/lib/systemd/network/90-rke2-image-dhcp.network"),
        conf.path().join("90-rke2-image-dhcp.network"),
    )
    .unwrap();
    conf
}

#[test]
fn networkd_configures_the_named_link_as_rendered() {
    let t = render_network(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: s1\nnetwork:\n  interface: v0\n  addresses: [10.0.0.11/24, \"fd00:10::11/64\"]\n  gateway: [10.0.0.1, \"fd00:10::1\"]\n  dns: [10.0.0.1]\n  search: [example.internal]\n  mtu: 9000\n",
        &[],
    );
    let conf = conf_dir(t.path());
    let script = networkd_script(
        conf.path(),
        "ip link add v0 type veth peer name v1\nip link set v1 up",
        "ip -o addr show dev v0 | grep -q 'inet 10.0.0.11/24'",
    );
    let Some(out) = in_netns(&script) else {
        return;
    };
    assert!(
        out.contains("v0: Configuring with /etc/systemd/network/10-rke2-firstboot.network"),
        "{out}"
    );
    assert_eq!(
        complaints(&out, "10-rke2-firstboot.network"),
        Vec::<&str>::new()
    );
    assert_eq!(
        complaints(&out, "90-rke2-image-dhcp.network"),
        Vec::<&str>::new()
    );
    let v0: Vec<&str> = out.lines().filter(|l| l.contains(" v0")).collect();
    let joined = v0.join("\n");
    for want in [
        "inet 10.0.0.11/24",
        "inet6 fd00:10::11/64",
        "mtu 9000",
        "default via 10.0.0.1 dev v0",
        "default via fd00:10::1 dev v0",
    ] {
        assert!(joined.contains(want), "no {want:?} for v0 in:\n{out}");
    }
    // The peer is a virtual link: the DHCP default (Kind=!*) leaves it alone.
    assert!(!out.contains("v1: Configuring with"), "{out}");
}

#[test]
fn networkd_accepts_the_mac_file_and_skips_virtual_links_with_that_mac() {
    let t = render_network(
        &String::from_utf8(common::example("cluster.yaml")).unwrap(),
        &["mac=52:54:00:00:01:01"],
    );
    let conf = conf_dir(t.path());
    // A veth carrying cp-1's MAC, as a VLAN or bond would: not the NIC, so not configured.
    let script = networkd_script(
        conf.path(),
        "ip link add v0 address 52:54:00:00:01:01 type veth peer name v1\nip link set v1 up",
        "grep -q 'Enumeration completed' /run/networkd.log",
    );
    let Some(out) = in_netns(&script) else {
        return;
    };
    assert_eq!(
        complaints(&out, "10-rke2-firstboot.network"),
        Vec::<&str>::new()
    );
    assert!(!out.contains("Configuring with"), "{out}");
    assert!(!out.contains("10.0.0.11"), "{out}");
}

/// Every phase hands what it wrote (new directories included) to the relabel hook before the
/// next phase runs, so RKE2 never meets a file with the label its creator's domain implied;
/// a failing relabel fails the run with nothing enabled.
#[test]
fn relabel_hook_sees_every_written_path_after_its_phase() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let cfg = "apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: s1\nnetwork:\n  interface: eth0\n  addresses: [10.0.0.5/24]\n";
    let seen: Arc<Mutex<Vec<Vec<std::path::PathBuf>>>> = Arc::default();
    let mut e = env(
        t.path(),
        cfg.as_bytes().to_vec(),
        Some(Box::new(|_, _| Ok("eth0".into()))),
    );
    let s2 = seen.clone();
    e.relabel = Some(Box::new(move |paths| {
        s2.lock().unwrap().push(paths.to_vec());
        Ok(())
    }));
    let mut log = Vec::new();
    agent::run(&e, &mut |m| log.push(m.to_string())).unwrap();
    let batches = seen.lock().unwrap().clone();
    let all: Vec<_> = batches.iter().flatten().collect();
    for p in [
        "etc/rancher",
        "etc/rancher/rke2/config.yaml",
        NET_FILE,
        "etc/systemd/system/multi-user.target.wants/rke2-server.service",
        "var/lib/rke2-firstboot/done",
    ] {
        assert!(
            all.contains(&&t.path().join(p)),
            "{p} not relabelled; got {all:#?}"
        );
    }
    for p in &all {
        assert!(
            p.starts_with(t.path()) && fs::symlink_metadata(p).is_ok(),
            "{p:?}"
        );
    }
    // The network file is labelled before networkd is restarted to read it, i.e. in the
    // System phase's batch, which comes before the one holding the RKE2 configuration.
    let batch_of = |p: &str| batches.iter().position(|b| b.contains(&t.path().join(p)));
    assert!(batch_of(NET_FILE) < batch_of("etc/rancher/rke2/config.yaml"));

    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let mut e = env(t.path(), cfg.as_bytes().to_vec(), None);
    e.relabel = Some(Box::new(|_| {
        Err("restorecon failed (exit status: 255): boom".into())
    }));
    let err = agent::run(&e, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(
        err,
        "SELinux labels: restorecon failed (exit status: 255): boom"
    );
    assert!(!t.path().join("var/lib/rke2-firstboot/done").exists());
    assert!(!t
        .path()
        .join("etc/systemd/system/multi-user.target.wants/rke2-server.service")
        .exists());
}

/// A failing run rolls back, and what the rollback put back (new inodes, e.g. /etc/passwd)
/// is handed to the relabel hook again, so no restored file keeps a wrong label.
#[test]
fn rollback_relabels_what_it_restored() {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let before = common::snapshot(t.path());
    let cfg = "apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: s1\nusers:\n  - name: ops\nfiles:\n  - path: /etc/motd\n    content: hi\n";
    let seen: Arc<Mutex<Vec<Vec<std::path::PathBuf>>>> = Arc::default();
    let mut e = env(t.path(), cfg.as_bytes().to_vec(), None);
    let s2 = seen.clone();
    e.relabel = Some(Box::new(move |paths| {
        let mut s = s2.lock().unwrap();
        s.push(paths.to_vec());
        // The files phase's relabelling fails: the run fails after two phases wrote.
        if s.len() == 2 {
            return Err("boom".into());
        }
        Ok(())
    }));
    let err = agent::run(&e, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("boom"), "{err}");
    let batches = seen.lock().unwrap().clone();
    assert_eq!(batches.len(), 3, "{batches:#?}");
    for p in ["etc/passwd", "etc/shadow", "etc/group"] {
        assert!(batches[2].contains(&t.path().join(p)), "{p}: {batches:#?}");
    }
    // Back as it was, apart from the failure record `run` writes afterwards.
    let mut after = common::snapshot(t.path());
    after.retain(|(l, _)| !l.starts_with("var"));
    assert_eq!(after, before);
}
