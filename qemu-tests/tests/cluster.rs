//! End to end: one image, booted as a cluster. Every node gets the same cluster configuration
//! (the native NodeConfig, nodes matched by MAC) through QEMU fw_cfg or a NoCloud `CIDATA`
//! drive; the nodes share a private segment (a UDP hub on 127.0.0.1) with static addresses.
//! The RKE2 supervisor is the stand-in (a test double) the generated release ships.
//!
//! Also the failure cases of joining (against a stand-in server on 127.0.0.1 reached through
//! an isolated user network) and a power cut in the middle of the first boot.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rke2_qemu_tests::built::Image;
use rke2_qemu_tests::cluster::{self, Delivery, Node, NodeSpec, Report, Slots};
use rke2_qemu_tests::hub::Hub;
use rke2_qemu_tests::pxe::{Netboot, PXE_MEMORY_MIB};
use rke2_qemu_tests::vm::{accel, Boot, Config, Net, Nic};

const VERSION: &str = "v1.31.5+rke2r1";
/// Generous: TCG on a shared 2-core machine, several guests at once.
const TIMEOUT: Duration = Duration::from_secs(1200);
/// vCPUs running at once in this process (every node has one).
static SLOTS: Slots = Slots::new(4);

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster")
}

/// The image, built once for all tests here; None (tests skipped) without a base.
fn image() -> Option<&'static Image> {
    static IMG: OnceLock<Option<Image>> = OnceLock::new();
    // Checked by every test (outside the once-only init), so each skip is reported.
    let (base, programs) = rke2_qemu_tests::test_inputs()?;
    IMG.get_or_init(|| {
        std::fs::create_dir_all(work_dir()).expect("creating the work directory");
        // Timings of this run only.
        let _ = std::fs::remove_file(work_dir().join("timings.log"));
        let start = std::time::Instant::now();
        let img = cluster::payload_image(
            &base,
            &programs,
            &work_dir().join("image"),
            VERSION,
            "raw,iso,pxe",
        )
        .expect("building the cluster image");
        eprintln!(
            "built {} in {:.1} s",
            img.disk.display(),
            start.elapsed().as_secs_f64()
        );
        Some(img)
    })
    .as_ref()
}

/// A fresh directory for one test's disks and logs.
fn test_dir(name: &str) -> PathBuf {
    let d = work_dir().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mac(n: u8, i: u8) -> String {
    format!("52:54:00:e2:{n:02x}:{i:02x}")
}

/// The cluster configuration: `servers` servers (the first initializes) and `agents` agents
/// on 10.0.0.0/24, matched by MAC `mac(1, i)` / `mac(2, i)`.
fn cluster_config(servers: u8, agents: u8) -> String {
    let mut c = String::from(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  token: e2e-cluster-password-7f3a\n  preflight:\n    timeout-seconds: 900\nnodes:\n",
    );
    for i in 1..=servers {
        c.push_str(&format!(
            "  - hostname: cp-{i}\n    match: {{ mac: \"{}\" }}\n    role: server\n{}    network:\n      addresses: [10.0.0.{}/24]\n",
            mac(1, i),
            if i == 1 { "    initializer: true\n    address: 10.0.0.11\n" } else { "" },
            10 + i
        ));
    }
    for i in 1..=agents {
        c.push_str(&format!(
            "  - hostname: worker-{i}\n    match: {{ mac: \"{}\" }}\n    role: agent\n    network:\n      addresses: [10.0.0.{}/24]\n",
            mac(2, i),
            20 + i
        ));
    }
    c
}

fn nic(mac: String, net: Net) -> Vec<Nic> {
    vec![Nic { mac, net }]
}

/// What every node must show: verified root, FIPS, SELinux enforcing, no denial of ours.
fn check_secure(r: &Report) {
    assert_eq!(r.fact("root_fstype"), "erofs", "{}", r.name);
    assert!(
        r.fact("root_dm_uuid").starts_with("RKE2-VERITY-"),
        "{}",
        r.name
    );
    assert_eq!(r.fact("fips"), "1", "{}", r.name);
    assert_eq!(r.fact("selinux_enforce"), "1", "{}", r.name);
    for d in r.denials() {
        eprintln!("{}: observed: {d}", r.name);
    }
    let ours = rke2_qemu_tests::probe::our_denials(&r.console);
    assert!(
        ours.is_empty(),
        "{}: AVC denials for our components: {ours:#?}",
        r.name
    );
}

fn check_joined_node(r: &Report, hostname: &str, role: &str, addr: &str) {
    check_secure(r);
    assert!(
        r.fact("fb_status").starts_with("first boot completed"),
        "{}: {:?}",
        r.name,
        r.facts
    );
    assert_eq!(r.fact("hostname"), hostname);
    assert!(
        r.fact("addrs").split(' ').any(|a| a == addr),
        "{}: {:?}",
        r.name,
        r.facts
    );
    assert_eq!(r.fact("role_unit"), role);
    assert_eq!(
        r.fact(&format!("unit_active:{role}")),
        "active",
        "{}",
        r.name
    );
    let other = if role == "rke2-server" {
        "rke2-agent"
    } else {
        "rke2-server"
    };
    assert_eq!(
        r.fact(&format!("unit_active:{other}")),
        "inactive",
        "{}",
        r.name
    );
    assert_eq!(
        r.fact(&format!("unit_file:{other}")),
        "disabled",
        "{}",
        r.name
    );
}

/// The agent `a` passed its join preflight, and its stand-in rke2 agent joined the server
/// VM `s` (10.0.0.11) and pinned the CA that server created. Returns the joined record.
fn check_agent_joined<'a>(a: &'a Report, s: &Report) -> &'a str {
    assert!(a.console.contains("join preflight passed"), "{}", a.name);
    let joined = a.fact("joined_agent");
    assert!(joined.contains("server=https://10.0.0.11:9345"), "{joined}");
    assert!(
        joined.contains(&format!("ca-sha256={}", s.fact("server_ca"))),
        "{joined} vs {}",
        s.fact("server_ca")
    );
    joined
}

/// Prints each node's timings and appends them to `timings.log` next to the consoles
/// (`scripts/test` shows that file: passing tests' output is captured).
fn print_timings(reports: &[&Report]) {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work_dir().join("timings.log"))
        .ok();
    for r in reports {
        let line = format!("TIMING {} ({}): {}", r.name, accel(), r.timings);
        eprintln!("{line}");
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The payload without a node configuration: the RKE2 units are installed but stay disabled
/// and inactive (the first-boot agent finds nothing and enables nothing), the CIS sysctls are
/// active, rke2 carries its label and the air-gap tarballs are in the verified root.
#[test]
fn payload_units_inactive_without_configuration_cis_sysctls_active() {
    let img = rke2_qemu_tests::need!(image());
    let dir = test_dir("payload");
    let _slots = SLOTS.take(1);
    let mut n = Node::boot(
        img,
        &dir,
        &NodeSpec::new("payload", Vec::new(), Delivery::None),
    )
    .unwrap();
    let r = n.wait_probe(TIMEOUT).unwrap();
    print_timings(&[&r]);
    check_secure(&r);
    assert!(
        r.console.contains("no configuration found"),
        "{}",
        n.vm.tail()
    );
    for u in ["rke2-server", "rke2-agent"] {
        assert_eq!(
            r.fact(&format!("unit_file:{u}")),
            "disabled",
            "{:?}",
            r.facts
        );
        assert_eq!(r.fact(&format!("unit_active:{u}")), "inactive");
    }
    // The values rke2's CIS profile insists on.
    assert_eq!(r.fact("sysctl:vm/overcommit_memory"), "1");
    assert_eq!(r.fact("sysctl:vm/panic_on_oom"), "0");
    assert_eq!(r.fact("sysctl:kernel/panic"), "10");
    assert_eq!(r.fact("sysctl:kernel/panic_on_oops"), "1");
    assert!(
        r.fact("label:/usr/bin/rke2").contains(":rke2_exec_t:"),
        "{:?}",
        r.facts
    );
    assert!(
        r.fact("airgap_images").contains("rke2-images-core"),
        "{:?}",
        r.facts
    );
}

/// Issue 6's main case: one server (initializer, configured through fw_cfg) and one agent
/// (configured through a NoCloud drive) from the same configuration; the agent's first-boot
/// preflight passes against the server's :9345 and its rke2-agent reports joined.
#[test]
fn server_and_agent_join_over_9345() {
    let img = rke2_qemu_tests::need!(image());
    let dir = test_dir("join");
    let config = cluster_config(1, 1).into_bytes();
    let hub = Hub::start(2).unwrap();
    let _slots = SLOTS.take(2);
    let mut server = Node::boot(
        img,
        &dir,
        &NodeSpec::new(
            "cp-1",
            nic(mac(1, 1), hub.port(0)),
            Delivery::FwCfg(config.clone()),
        )
        .hold(),
    )
    .unwrap();
    let mut agent = Node::boot(
        img,
        &dir,
        &NodeSpec::new(
            "worker-1",
            nic(mac(2, 1), hub.port(1)),
            Delivery::NoCloud(config),
        ),
    )
    .unwrap();
    let a = agent.wait_probe(TIMEOUT).unwrap();
    let s = server.wait_probe(TIMEOUT).unwrap();
    print_timings(&[&s, &a]);
    eprintln!("hub repeated {} frames", hub.frames());

    check_joined_node(&s, "cp-1", "rke2-server", "10.0.0.11/24");
    check_joined_node(&a, "worker-1", "rke2-agent", "10.0.0.21/24");
    assert!(s
        .console
        .contains("configuration from fw_cfg opt/org.rke2-image/config"));
    assert!(s.console.contains("role: server (initializer)"));
    assert!(a
        .console
        .contains("configuration from NoCloud config drive user-data"));
    assert!(a
        .console
        .contains("join preflight against https://10.0.0.11:9345"));
    let joined = check_agent_joined(&a, &s);
    // The air-gap tarballs the image preloaded were linked for the agent and checked readable.
    assert!(
        a.fact("agent_images").contains("rke2-images-core"),
        "{:?}",
        a.facts
    );
    assert!(
        joined.contains("image=/var/lib/rancher/rke2/agent/images/"),
        "{joined}"
    );
    // The server saw the agent authenticate (its log is on the server's console).
    assert!(
        s.console.contains("GET /v1-rke2/readyz -> 200"),
        "server log lacks the agent's join"
    );
}

/// HA: three servers and one agent, four guests at once. The joining servers pass the
/// preflight as `server`, join the initializer and serve the same cluster CA; the agent joins.
#[test]
fn ha_three_servers_and_an_agent() {
    let img = rke2_qemu_tests::need!(image());
    let dir = test_dir("ha");
    let config = cluster_config(3, 1).into_bytes();
    let hub = Hub::start(4).unwrap();
    let _slots = SLOTS.take(4);
    let mut nodes = Vec::new();
    for (i, (name, m)) in [
        ("cp-1", mac(1, 1)),
        ("cp-2", mac(1, 2)),
        ("cp-3", mac(1, 3)),
        ("worker-1", mac(2, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        // Half through fw_cfg, half through NoCloud: both sources in one cluster.
        let delivery = if i % 2 == 0 {
            Delivery::FwCfg(config.clone())
        } else {
            Delivery::NoCloud(config.clone())
        };
        let mut spec = NodeSpec::new(name, nic(m, hub.port(i)), delivery);
        if name.starts_with("cp-") {
            spec = spec.hold();
        }
        nodes.push(Node::boot(img, &dir, &spec).unwrap());
    }
    let mut reports = Vec::new();
    for n in nodes.iter_mut().rev() {
        reports.push(n.wait_probe(TIMEOUT).unwrap());
    }
    reports.reverse();
    print_timings(&reports.iter().collect::<Vec<_>>());
    let ca = reports[0].fact("server_ca").to_string();
    check_joined_node(&reports[0], "cp-1", "rke2-server", "10.0.0.11/24");
    for (i, r) in reports[1..3].iter().enumerate() {
        check_joined_node(
            r,
            &format!("cp-{}", i + 2),
            "rke2-server",
            &format!("10.0.0.{}/24", i + 12),
        );
        assert!(r.console.contains("join preflight passed"), "{}", r.name);
        assert!(
            r.fact("joined_server")
                .contains("server=https://10.0.0.11:9345"),
            "{:?}",
            r.facts
        );
        assert_eq!(r.fact("server_ca"), ca, "{} serves another CA", r.name);
    }
    let a = &reports[3];
    check_joined_node(a, "worker-1", "rke2-agent", "10.0.0.21/24");
    assert!(a.fact("joined_agent").contains(&format!("ca-sha256={ca}")));
}

/// One cluster from mixed media (issue 11): the server's machine boots the ISO from a virtual
/// CD-ROM, installs onto its empty virtio disk unattended (`install:` with `then: reboot`),
/// and reboots — with the CD still first in the firmware's boot order, so coming up from the
/// disk proves the installer's UEFI entry and `BootNext` — into the installed disk, where the
/// same configuration makes it the server. The agent boots diskless over PXE (OVMF PXE, iPXE,
/// HTTP) with its state in RAM. Both get the same cluster configuration through fw_cfg; the
/// agent joins the server over :9345.
#[test]
fn mixed_media_server_installed_from_iso_agent_over_pxe_join() {
    let img = rke2_qemu_tests::need!(image());
    let iso = img
        .iso
        .as_ref()
        .expect("the cluster image has no iso output");
    let pxe = img
        .pxe
        .as_ref()
        .expect("the cluster image has no pxe output");
    let dir = test_dir("mixed");
    let config = cluster_config(1, 1).replace(
        "    role: server\n",
        "    role: server\n    install:\n      target: /dev/vda\n      then: reboot\n",
    );
    assert!(config.contains("install:"), "{config}");
    let config = config.into_bytes();
    let hub = Hub::start(2).unwrap();

    // The server's machine: the ISO on its CD drive (first boot device), an empty disk.
    let disk = dir.join("cp-1.disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(img.manifest.disk.size + (2 << 30))
        .unwrap();
    let _slots = SLOTS.take(2);
    let mut cfg = Config::new(iso, Boot::Cdrom);
    cfg.rw_drives = vec![disk.clone()];
    cfg.reboot = true;
    let mut server = Node::start(
        cfg,
        &dir,
        &NodeSpec::new(
            "cp-1",
            nic(mac(1, 1), hub.port(0)),
            Delivery::FwCfg(config.clone()),
        )
        .hold(),
    )
    .unwrap();
    let installed_at = server
        .vm
        .wait_for("rke2-install: done; reboot", &cluster::FATAL, TIMEOUT)
        .unwrap_or_else(|e| panic!("cp-1: install from the ISO ({}): {e}", accel()));
    eprintln!(
        "TIMING cp-1 install from the ISO ({}): done {:.1} s after QEMU start",
        accel(),
        installed_at.as_secs_f64()
    );
    let console = server.vm.console();
    assert!(
        console.contains("rke2-install: installing onto /dev/vda"),
        "{}",
        server.vm.tail()
    );
    assert!(
        console.contains("BootNext set to it"),
        "{}",
        server.vm.tail()
    );
    assert!(
        !console.contains("RKE2-PROBE"),
        "the live system ran the payload"
    );

    let net = Netboot::start(&dir, "worker-1", pxe, None).unwrap();
    let mut cfg = Config::new(dir.join("no-disk"), net.boot());
    cfg.nics = vec![net.nic("52:54:00:e2:ff:01").unwrap()];
    let mut agent_spec = NodeSpec::new(
        "worker-1",
        nic(mac(2, 1), hub.port(1)),
        Delivery::FwCfg(config),
    );
    agent_spec.memory_mib = PXE_MEMORY_MIB;
    let mut agent = Node::start(cfg, &dir, &agent_spec).unwrap();
    net.chain(&mut agent.vm, "boot.ipxe", &cluster::FATAL)
        .unwrap_or_else(|e| panic!("worker-1 PXE ({}): {e:#}", accel()));
    let a = agent.wait_probe(TIMEOUT).unwrap();
    let s = server.wait_probe(TIMEOUT).unwrap();
    print_timings(&[&s, &a]);

    check_joined_node(&s, "cp-1", "rke2-server", "10.0.0.11/24");
    check_joined_node(&a, "worker-1", "rke2-agent", "10.0.0.21/24");
    // The server runs from the installed disk's partitions, the agent from the network root.
    assert!(
        s.fact("root_dm_slaves").contains("vda"),
        "server root not on the installed disk: {:?}",
        s.facts
    );
    assert!(
        a.fact("root_dm_slaves").contains("loop"),
        "agent root not from the PXE initramfs: {:?}",
        a.facts
    );
    assert!(
        a.fact("state_source").starts_with("/dev/loop"),
        "{:?}",
        a.facts
    );
    check_agent_joined(&a, &s);
    let reqs = net.http.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /rootfs.img ")),
        "{reqs:?}"
    );
    drop(server);
    drop(agent);
    let _ = std::fs::remove_file(&disk);
}

/// A stand-in server on 127.0.0.1 that VMs reach as 10.0.2.100:9345 through their isolated
/// user network.
struct HostServer {
    p: rke2_testsupport::ServerProcess,
    _root: tempfile::TempDir,
}

const HOST_SERVER_IP: &str = "10.0.2.100";

impl HostServer {
    fn start() -> HostServer {
        let root = tempfile::tempdir().unwrap();
        let bin = rke2_testsupport::stand_in_binary().unwrap();
        let p = rke2_testsupport::ServerProcess::start(
            &bin,
            root.path(),
            &[
                "--bind",
                "127.0.0.1:0",
                "--ready-delay",
                "0",
                "--tls-san",
                HOST_SERVER_IP,
            ],
            None,
        )
        .unwrap();
        HostServer { p, _root: root }
    }

    fn net(&self) -> Net {
        Net::User {
            forwards: vec![(
                format!("{HOST_SERVER_IP}:9345").parse().unwrap(),
                format!("127.0.0.1:{}", self.p.port).parse().unwrap(),
            )],
        }
    }
}

/// A one-agent configuration joining `server` with `token`, preflight deadline `secs`.
fn agent_config(server: &str, token: &str, addr: &str, secs: u32, m: &str) -> Vec<u8> {
    format!(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\ncluster:\n  server: {server}\n  token: \"{token}\"\n  preflight:\n    timeout-seconds: {secs}\nnodes:\n  - hostname: joiner\n    match: {{ mac: \"{m}\" }}\n    role: agent\n    network:\n      addresses: [{addr}]\n"
    )
    .into_bytes()
}

/// Boots one node whose first boot must fail; returns its report after checking that no RKE2
/// service is enabled or running and the reason is on the console.
fn failed_boot(img: &Image, name: &str, spec: NodeSpec, reason: &str) -> Report {
    let dir = test_dir(name);
    let _slots = SLOTS.take(1);
    let mut n = Node::boot(img, &dir, &spec).unwrap();
    let r = n.wait_probe(TIMEOUT).unwrap();
    print_timings(&[&r]);
    check_secure(&r);
    let line = r
        .console
        .lines()
        .find(|l| l.contains("rke2-firstboot: FAILED"))
        .unwrap_or_else(|| panic!("{name}: no FAILED line on the console:\n{}", n.vm.tail()));
    assert!(line.contains(reason), "{name}: {line}");
    assert!(line.contains("no RKE2 service was enabled"), "{line}");
    assert_eq!(r.fact("fb_active"), "failed");
    assert!(
        r.fact("fb_status").starts_with("first boot FAILED"),
        "{:?}",
        r.facts
    );
    assert_eq!(r.fact("role_unit"), "");
    for u in ["rke2-server", "rke2-agent"] {
        assert_eq!(r.fact(&format!("unit_file:{u}")), "disabled", "{name}");
        assert_eq!(r.fact(&format!("unit_active:{u}")), "inactive", "{name}");
    }
    r
}

#[test]
fn wrong_token_password_is_rejected() {
    let img = rke2_qemu_tests::need!(image());
    let srv = HostServer::start();
    let token = srv.p.token().unwrap();
    let wrong = format!("{}:not-the-password", token.rsplit_once(':').unwrap().0);
    let m = mac(3, 1);
    let spec = NodeSpec::new(
        "wrong-token",
        nic(m.clone(), srv.net()),
        Delivery::FwCfg(agent_config(
            &format!("https://{HOST_SERVER_IP}:9345"),
            &wrong,
            "10.0.2.15/24",
            300,
            &m,
        )),
    );
    let r = failed_boot(
        img,
        "wrong-token",
        spec,
        "token rejected by https://10.0.2.100:9345 (HTTP 401",
    );
    // The CA matched (the hash is right), and the password never reaches the console.
    assert!(!r.console.contains("not-the-password"));
    let log = srv.p.drain_log();
    assert!(log.contains("GET /cacerts -> 200"), "{log}");
    assert!(log.contains("GET /v1-rke2/readyz -> 401"), "{log}");
}

#[test]
fn server_ca_not_matching_the_token_is_refused() {
    let img = rke2_qemu_tests::need!(image());
    let srv = HostServer::start();
    let token = srv.p.token().unwrap();
    // Right password, but the token pins another CA: a server impersonating the cluster.
    let password = token.rsplit_once(':').unwrap().1;
    let pinned = "ab".repeat(32);
    let m = mac(3, 2);
    let spec = NodeSpec::new(
        "ca-mismatch",
        nic(m.clone(), srv.net()),
        Delivery::NoCloud(agent_config(
            &format!("https://{HOST_SERVER_IP}:9345"),
            &format!("K10{pinned}::server:{password}"),
            "10.0.2.15/24",
            300,
            &m,
        )),
    );
    let r = failed_boot(
        img,
        "ca-mismatch",
        spec,
        "server CA does not match the token",
    );
    assert!(r.console.contains(&format!("the token pins {pinned}")));
    let log = srv.p.drain_log();
    assert!(log.contains("GET /cacerts -> 200"), "{log}");
    // It refused before sending the password anywhere.
    assert!(!log.contains("GET /v1-rke2/readyz"), "{log}");
}

#[test]
fn unreachable_server_retries_then_fails_with_what_it_tried() {
    let img = rke2_qemu_tests::need!(image());
    // A segment with nobody else on it.
    let hub = Hub::start(1).unwrap();
    let m = mac(3, 3);
    let spec = NodeSpec::new(
        "unreachable",
        nic(m.clone(), hub.port(0)),
        Delivery::FwCfg(agent_config(
            "https://10.0.0.11:9345",
            "some-password",
            "10.0.0.31/24",
            30,
            &m,
        )),
    );
    let r = failed_boot(
        img,
        "unreachable",
        spec,
        "https://10.0.0.11:9345 not ready after 30 s",
    );
    let line = r
        .console
        .lines()
        .find(|l| l.contains("rke2-firstboot: FAILED"))
        .unwrap();
    assert!(line.contains("attempts); last: "), "{line}");
    assert!(line.contains("10.0.0.11:9345"), "{line}");
}

#[test]
fn no_node_matching_this_machine_names_its_macs() {
    let img = rke2_qemu_tests::need!(image());
    let hub = Hub::start(1).unwrap();
    let m = mac(3, 4);
    // The cluster configuration, but this machine's MAC is in none of its entries.
    let spec = NodeSpec::new(
        "stranger",
        nic(m.clone(), hub.port(0)),
        Delivery::FwCfg(cluster_config(1, 1).into_bytes()),
    );
    let r = failed_boot(
        img,
        "stranger",
        spec,
        "no node in the configuration matches this machine",
    );
    let line = r
        .console
        .lines()
        .find(|l| l.contains("rke2-firstboot: FAILED"))
        .unwrap();
    assert!(
        line.contains(&m),
        "the error must name this machine's MAC {m}: {line}"
    );
}

/// Power cut in the middle of the first boot (paused by the test-only fw_cfg knob at the
/// `enable` phase: configuration written, service not enabled, no stamp), then a normal boot:
/// the node converges to exactly the tree of an uninterrupted first boot of the same machine.
#[test]
fn power_cut_during_first_boot_converges() {
    let img = rke2_qemu_tests::need!(image());
    let dir = test_dir("power-cut");
    let m = mac(1, 1);
    let config = cluster_config(1, 1).into_bytes();
    let spec = |name: &str, hub: &Hub| {
        NodeSpec::new(
            name,
            nic(m.clone(), hub.port(0)),
            Delivery::FwCfg(config.clone()),
        )
    };
    // Same machine identity on two separate segments.
    let (hub_a, hub_b) = (Hub::start(1).unwrap(), Hub::start(1).unwrap());
    let _slots = SLOTS.take(2);
    let mut reference = Node::boot(img, &dir, &spec("reference", &hub_a)).unwrap();
    let cut_spec = spec("cut", &hub_b).knob("pause-before", "enable");
    let mut cut = Node::boot(img, &dir, &cut_spec).unwrap();
    cut.vm
        .wait_for(
            "test knob: pausing before phase enable",
            &cluster::FATAL,
            TIMEOUT,
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    cut.vm.power_cut();
    let first = cut.report();
    assert!(first.console.contains("role: server (initializer)"));
    assert!(!first.console.contains("RKE2-PROBE"));
    let disk = cut.disk.clone();
    drop(cut);
    let mut again = Node::boot_disk(&disk, &dir, &spec("cut", &hub_b)).unwrap();
    let after = again.wait_probe(TIMEOUT).unwrap();
    let reference = reference.wait_probe(TIMEOUT).unwrap();
    print_timings(&[&reference, &after]);
    // The second boot found no stamp and ran the agent again, to completion.
    assert!(after.console.contains("rke2-init: state: mounted existing"));
    check_joined_node(&after, "cp-1", "rke2-server", "10.0.0.11/24");
    check_joined_node(&reference, "cp-1", "rke2-server", "10.0.0.11/24");
    let entries = |r: &Report| -> Vec<String> {
        r.facts
            .iter()
            .filter(|(k, _)| k.starts_with("fbentry:"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect()
    };
    assert_eq!(entries(&after), entries(&reference));
    assert!(entries(&after)
        .iter()
        .any(|e| e.contains("/etc/rancher/rke2/config.yaml")));
    assert_eq!(after.fact("fbtree"), reference.fact("fbtree"));
}
