//! Role resolution of the example cluster configuration by each kind of identity.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use rke2_firstboot::agent::{self, AgentError};
use rke2_firstboot::dialects::native::Role;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::role::{resolve, RoleError};
use rke2_firstboot::sources::Found;

fn assign(id: &[&str]) -> Result<rke2_firstboot::role::Assignment, AgentError> {
    let found = Found {
        origin: "cluster.yaml".into(),
        bytes: common::example("cluster.yaml"),
        meta_hostname: None,
    };
    agent::load(&found, &Identity::from_args(id).unwrap()).map(|l| l.assignment.unwrap())
}

#[test]
fn by_mac() {
    let a = assign(&["mac=52:54:00:00:01:01"]).unwrap();
    assert_eq!(
        (
            a.hostname.as_deref(),
            a.role,
            a.initializer,
            a.server_url.as_deref()
        ),
        (Some("cp-1"), Role::Server, true, None)
    );
    // Upper case and dashes are the same MAC.
    assert_eq!(
        assign(&["mac=52-54-00-00-02-01"])
            .unwrap()
            .hostname
            .as_deref(),
        Some("worker-1")
    );
}

#[test]
fn by_uuid_case_insensitive() {
    let a = assign(&["uuid=6F1D7A3E-0C4B-4D0F-9A55-2B1C3D4E5F60"]).unwrap();
    assert_eq!(a.hostname.as_deref(), Some("cp-2"));
    assert_eq!(a.server_url.as_deref(), Some("https://10.0.0.11:9345"));
    assert!(!a.initializer);
}

#[test]
fn by_serial() {
    let a = assign(&["serial=SRV-0003"]).unwrap();
    assert_eq!(
        (a.hostname.as_deref(), a.role),
        (Some("cp-3"), Role::Server)
    );
}

#[test]
fn by_hostname() {
    let a = assign(&["hostname=localhost-worker-2"]).unwrap();
    assert_eq!(
        (a.hostname.as_deref(), a.role),
        (Some("worker-2"), Role::Agent)
    );
    assert_eq!(
        a.extra.get("node-ip").and_then(|v| v.as_str()),
        Some("10.0.0.22")
    );
}

#[test]
fn no_match_names_this_machine() {
    let e = assign(&["mac=52:54:00:aa:bb:cc", "serial=XYZ", "hostname=stray"]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, AgentError::Role(RoleError::NoMatch { .. })),
        "{msg}"
    );
    for part in [
        "52:54:00:aa:bb:cc",
        "serial=XYZ",
        "hostname=stray",
        "uuid=(none)",
    ] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
}

#[test]
fn matching_two_nodes_is_an_error() {
    let e = assign(&["mac=52:54:00:00:01:01", "serial=SRV-0003"]).unwrap_err();
    assert!(
        matches!(e, AgentError::Role(RoleError::Ambiguous { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("cp-1, cp-3"), "{e}");
}

#[test]
fn two_initializers_is_an_error() {
    let text = String::from_utf8(common::example("cluster.yaml"))
        .unwrap()
        .replace(
            "    labels: { topology.kubernetes.io/zone: b }",
            "    initializer: true\n    labels: { topology.kubernetes.io/zone: b }",
        );
    let e = agent::validate("cluster.yaml", text.as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 servers are marked initializer (cp-1, cp-2)"),
        "{e}"
    );
}

#[test]
fn agent_initializer_and_missing_address_are_errors() {
    let base = String::from_utf8(common::example("cluster.yaml")).unwrap();
    let t = base.replace(
        "    role: server\n    initializer: true\n    address: 10.0.0.11\n",
        "    role: server\n    initializer: true\n",
    );
    let e = agent::validate("c", t.as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("initializer cp-1 has no address"), "{e}");
    let t = base.replace(
        "    role: agent\n    labels: { node-role",
        "    role: agent\n    initializer: true\n    labels: { node-role",
    );
    let e = agent::validate("c", t.as_bytes(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("only a server can be the initializer"), "{e}");
}

#[test]
fn single_node_needs_no_node_list() {
    let found = Found {
        origin: "single".into(),
        bytes: common::example("single-server.yaml"),
        meta_hostname: None,
    };
    let l = agent::load(&found, &Identity::default()).unwrap();
    let a = l.assignment.unwrap();
    assert!(a.initializer && a.server_url.is_none() && a.role == Role::Server);
    let cfg = l.plan.rke2.unwrap();
    // Any identity resolves the same way.
    assert_eq!(
        resolve(&cfg, &Identity::from_args(&["serial=whatever"]).unwrap()).unwrap(),
        a
    );
}
