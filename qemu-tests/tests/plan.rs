//! The System Upgrade Controller Plans shipped in `deploy/system-upgrade-controller/plan.yaml`
//! (issue 13, cluster rollout). Kubernetes cannot run here, so the file is checked against the
//! upgrade.cattle.io/v1 `Plan` fields: the structs below mirror upstream's types with
//! `deny_unknown_fields`, so a misspelt or misplaced key fails, and the rollout's promises
//! (servers one at a time with a snapshot first, agents drained after the servers) are asserted.
//!
//! Upstream: github.com/rancher/system-upgrade-controller, pkg/apis/upgrade.cattle.io/v1/types.go
//! at d357e2302999662071e0467b96e94f31b5c470ba (PlanSpec, ContainerSpec, DrainSpec,
//! SecretSpec, VolumeSpec, TimeWindowSpec), the Kubernetes core/v1 Toleration and meta/v1
//! LabelSelector they embed, and pkg/upgrade/container/container.go there (the node's root is
//! mounted at /host, the resolved version is `$SYSTEM_UPGRADE_PLAN_LATEST_VERSION`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(dead_code)] // fields exist to be recognised, not read

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Plan {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PlanSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectMeta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PlanSpec {
    #[serde(default)]
    concurrency: i64,
    job_active_deadline_secs: Option<i64>,
    node_selector: Option<LabelSelector>,
    service_account_name: Option<String>,
    channel: Option<String>,
    version: Option<String>,
    #[serde(default)]
    secrets: Vec<SecretSpec>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
    #[serde(default)]
    exclusive: bool,
    window: Option<TimeWindowSpec>,
    prepare: Option<ContainerSpec>,
    /// Required upstream (`json:"upgrade"`, no omitempty).
    upgrade: ContainerSpec,
    #[serde(default)]
    cordon: bool,
    drain: Option<DrainSpec>,
    #[serde(default)]
    image_pull_secrets: Vec<BTreeMap<String, String>>,
    post_complete_delay: Option<String>,
    priority_class_name: Option<String>,
    #[serde(default)]
    post_complete_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelSelectorRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Toleration {
    key: Option<String>,
    operator: Option<String>,
    value: Option<String>,
    effect: Option<String>,
    toleration_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSpec {
    name: String,
    path: String,
    #[serde(default, rename = "ignoreUpdates")]
    ignore_updates: bool,
    #[serde(rename = "defaultMode")]
    default_mode: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeWindowSpec {
    #[serde(default)]
    days: Vec<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    time_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerSpec {
    /// Required upstream (`json:"image"`).
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    /// Upstream spells the Go field `Env` as `envs`.
    #[serde(default)]
    envs: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    env_from: Vec<BTreeMap<String, String>>,
    #[serde(default)]
    volumes: Vec<VolumeSpec>,
    security_context: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeSpec {
    name: String,
    source: String,
    destination: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DrainSpec {
    /// IntOrString upstream: seconds or a duration string.
    timeout: Option<String>,
    grace_period: Option<i32>,
    delete_local_data: Option<bool>,
    delete_emptydir_data: Option<bool>,
    ignore_daemon_sets: Option<bool>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    disable_eviction: bool,
    #[serde(default)]
    skip_wait_for_delete_timeout: i64,
    pod_selector: Option<LabelSelector>,
}

fn plans_text() -> String {
    let p = rke2_qemu_tests::built::workspace().join("deploy/system-upgrade-controller/plan.yaml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn plans() -> Vec<Plan> {
    serde_saphyr::from_multiple(&plans_text()).unwrap()
}

/// The default image's `name:` (the bundle is `<name>-<version>.update`).
fn default_image_name() -> String {
    let p = rke2_qemu_tests::built::workspace().join("images/default.yaml");
    std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap()
        .trim()
        .to_string()
}

/// The script the upgrade container runs on the host: `chroot /host /bin/sh -ec SCRIPT`.
fn host_script(c: &ContainerSpec) -> &str {
    assert_eq!(c.command, ["chroot", "/host", "/bin/sh", "-ec"], "{c:?}");
    assert_eq!(c.args.len(), 1, "{c:?}");
    let s = &c.args[0];
    // Kubernetes expands `$(VAR)` in command and args itself; the script uses shell syntax only.
    assert!(!s.contains("$("), "kubelet would expand $( in: {s}");
    // The shell accepts it (a syntax check only: nothing runs).
    let st = std::process::Command::new("sh")
        .args(["-n", "-c", s])
        .status()
        .unwrap();
    assert!(st.success(), "sh -n rejects the script:\n{s}");
    s
}

fn selector_has(s: &LabelSelector, key: &str, op: &str) -> bool {
    s.match_expressions
        .iter()
        .any(|e| e.key == key && e.operator == op)
}

#[test]
fn plans_parse_as_upgrade_cattle_io_v1_plans() {
    let plans = plans();
    assert_eq!(plans.len(), 2);
    for p in &plans {
        assert_eq!(p.api_version, "upgrade.cattle.io/v1");
        assert_eq!(p.kind, "Plan");
        assert_eq!(p.metadata.namespace.as_deref(), Some("system-upgrade"));
        assert!(
            p.spec.version.is_some() != p.spec.channel.is_some(),
            "{}",
            p.metadata.name
        );
        assert!(p.spec.concurrency >= 1);
        for e in &p.spec.node_selector.as_ref().unwrap().match_expressions {
            match e.operator.as_str() {
                "In" | "NotIn" => assert!(!e.values.is_empty(), "{e:?}"),
                "Exists" | "DoesNotExist" => assert!(e.values.is_empty(), "{e:?}"),
                o => panic!(
                    "{}: operator {o} is not a LabelSelector operator",
                    p.metadata.name
                ),
            }
        }
        for t in &p.spec.tolerations {
            if let Some(e) = &t.effect {
                assert!(["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()));
            }
        }
    }
}

#[test]
fn servers_one_at_a_time_snapshot_then_apply_through_the_host() {
    let plans = plans();
    let s = plans
        .iter()
        .find(|p| p.metadata.name == "rke2-image-server")
        .unwrap();
    assert_eq!(s.spec.concurrency, 1);
    assert!(s.spec.cordon);
    assert!(s.spec.drain.is_none(), "servers are cordoned, not drained");
    assert!(selector_has(
        s.spec.node_selector.as_ref().unwrap(),
        "node-role.kubernetes.io/control-plane",
        "In"
    ));
    let script = host_script(&s.spec.upgrade);
    let snap = script.find("rke2 etcd-snapshot save").unwrap();
    let apply = script.find("rke2-update apply").unwrap();
    assert!(snap < apply, "the snapshot must come first:\n{script}");
    assert!(script.contains("--reboot"));
    assert!(script.contains(&format!("/{}-$v.update", default_image_name())));
}

#[test]
fn agents_wait_for_the_servers_and_are_drained() {
    let plans = plans();
    let s = plans
        .iter()
        .find(|p| p.metadata.name == "rke2-image-server")
        .unwrap();
    let a = plans
        .iter()
        .find(|p| p.metadata.name == "rke2-image-agent")
        .unwrap();
    assert_eq!(
        a.spec.version, s.spec.version,
        "both plans roll out one version"
    );
    assert!(selector_has(
        a.spec.node_selector.as_ref().unwrap(),
        "node-role.kubernetes.io/control-plane",
        "DoesNotExist"
    ));
    let drain = a.spec.drain.as_ref().unwrap();
    assert!(drain.force && drain.ignore_daemon_sets == Some(true));
    let prep = a.spec.prepare.as_ref().unwrap();
    assert!(prep
        .args
        .iter()
        .any(|x| x == "plans.upgrade.cattle.io/rke2-image-server"));
    assert!(prep.args.iter().any(|x| x == "--for=condition=Complete"));
    let script = host_script(&a.spec.upgrade);
    assert!(script.contains("rke2-update apply") && script.contains("--reboot"));
    assert!(!script.contains("etcd-snapshot"), "agents have no etcd");
}

/// The structs do reject what upstream does not know (the test can fail).
#[test]
fn a_misspelt_key_is_refused() {
    let bad = plans_text().replacen("cordon: true", "cordone: true", 1);
    let r: Result<Vec<Plan>, _> = serde_saphyr::from_multiple(&bad);
    assert!(r.is_err());
    let bad = plans_text().replacen("skipWaitForDeleteTimeout", "skipWaitForDelete", 1);
    let r: Result<Vec<Plan>, _> = serde_saphyr::from_multiple(&bad);
    assert!(r.is_err());
}
