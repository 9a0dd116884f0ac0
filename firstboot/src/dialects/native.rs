//! Our native node configuration (`apiVersion: rke2-image/v1`), documented in the README.
//!
//! Strict: an unknown key is an error naming it (a typo in a cluster configuration must not
//! silently produce a different cluster).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::install::{self, InstallSection};
use crate::network;
use crate::plan::{self, Dialect, FileSpec, Owner, Plan, UserSpec};

pub const API_GROUP: &str = "rke2-image/";
pub const API_VERSION: &str = "rke2-image/v1";
pub const KIND: &str = "NodeConfig";

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
    pub fn unit(self) -> &'static str {
        match self {
            Role::Server => "rke2-server.service",
            Role::Agent => "rke2-agent.service",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NativeConfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    /// Single-node configuration: this machine's hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Single-node configuration: role (default `server`).
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<String>,
    #[serde(default)]
    pub users: Vec<NativeUser>,
    #[serde(default)]
    pub files: Vec<NativeFile>,
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// Cluster configuration: the machines, matched by identity.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Single-node configuration: static addressing (`interface` required).
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// Install the image onto a disk (see [`crate::install`]); with a nodes list, the default
    /// for every node that has no `install` of its own.
    #[serde(default)]
    pub install: Option<InstallSection>,
}

impl NativeConfig {
    /// The `install:` section that applies to the node named `hostname` (its own
    /// `nodes[].install`, which replaces the top-level one whole, else the top-level one), with
    /// its key path for messages.
    pub fn install_for(&self, hostname: Option<&str>) -> (String, Option<&InstallSection>) {
        let own = self.nodes.iter().enumerate().find_map(|(i, n)| {
            (Some(n.hostname.as_str()) == hostname)
                .then(|| {
                    n.install
                        .as_ref()
                        .map(|s| (format!("nodes[{i}].install"), s))
                })
                .flatten()
        });
        match own {
            Some((k, s)) => (k, Some(s)),
            None => ("install".into(), self.install.as_ref()),
        }
    }
}

/// Static addressing of one interface (see [`crate::network`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkSpec {
    /// A MAC address or an interface name. Default: the node's `match.mac` this machine has.
    #[serde(default)]
    pub interface: Option<String>,
    /// `address/prefix`, IPv4 or IPv6; at least one.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// One address or a list (at most one IPv4 and one IPv6).
    #[serde(default)]
    pub gateway: Option<OneOrMany>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NativeUser {
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NativeFile {
    pub path: String,
    pub content: String,
    /// Octal string, e.g. "0644" (default 0644, or 0600 when `secret`).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSpec {
    /// Address of an existing server or load balancer: `host`, `host:port` or
    /// `https://host:port`. Unset: joiners use the initializer's `address`.
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub agent_token: Option<Secret>,
    #[serde(default)]
    pub tls_san: Vec<String>,
    #[serde(default)]
    pub cni: Option<OneOrMany>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub selinux: Option<bool>,
    #[serde(default)]
    pub cluster_cidr: Option<String>,
    #[serde(default)]
    pub service_cidr: Option<String>,
    /// Any other RKE2 configuration key, passed through to every node's config.yaml.
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// Pass-through keys for servers only (e.g. `kube-apiserver-arg`).
    #[serde(default)]
    pub server_config: BTreeMap<String, Value>,
    /// Pass-through keys for agents only.
    #[serde(default)]
    pub agent_config: BTreeMap<String, Value>,
    #[serde(default)]
    pub registries: Option<Registries>,
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// File name -> manifest YAML, placed in the servers' auto-deploy manifests directory.
    #[serde(default)]
    pub manifests: BTreeMap<String, String>,
    /// Chart name (e.g. `rke2-canal`) -> `valuesContent` of a HelmChartConfig.
    #[serde(default)]
    pub helm_chart_configs: BTreeMap<String, String>,
    /// Link the image's preloaded air-gap tarballs into the agent images directory (default true).
    #[serde(default)]
    pub airgap_images: Option<bool>,
    #[serde(default)]
    pub preflight: PreflightSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PreflightSpec {
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for PreflightSpec {
    fn default() -> Self {
        PreflightSpec {
            timeout_seconds: default_timeout(),
            enabled: true,
        }
    }
}

fn default_timeout() -> u64 {
    600
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RegistryTls>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<Secret>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Proxy {
    #[serde(default)]
    pub http_proxy: Option<Secret>,
    #[serde(default)]
    pub https_proxy: Option<Secret>,
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Match {
    #[serde(default)]
    pub mac: Option<OneOrMany>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSpec {
    /// Hostname (and RKE2 node name) given to the matched machine.
    pub hostname: String,
    #[serde(rename = "match")]
    pub matches: Match,
    pub role: Role,
    #[serde(default)]
    pub initializer: bool,
    /// Address other nodes use to reach this server (for the initializer when `cluster.server`
    /// is unset).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<String>,
    /// Per-node RKE2 keys; override `cluster.config`.
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// Static addressing for this node.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// This node's install target etc.; replaces the top-level `install` whole.
    #[serde(default)]
    pub install: Option<InstallSection>,
}

/// RKE2 keys the structured fields own; setting them through `config` would bypass checks.
pub const STRUCTURED_KEYS: &[(&str, &str)] = &[
    ("server", "cluster.server"),
    ("token", "cluster.token"),
    ("agent-token", "cluster.agent-token"),
    ("tls-san", "cluster.tls-san"),
    ("node-name", "hostname / nodes[].hostname"),
    ("node-label", "labels / nodes[].labels"),
    ("node-taint", "taints / nodes[].taints"),
    ("cni", "cluster.cni"),
    ("profile", "cluster.profile"),
    ("selinux", "cluster.selinux"),
    ("cluster-cidr", "cluster.cluster-cidr"),
    ("service-cidr", "cluster.service-cidr"),
];

/// Parses and checks a native configuration into a plan.
pub fn parse(text: &str) -> Result<Plan, String> {
    let cfg: NativeConfig = serde_saphyr::from_str_with_options(text, super::yaml_options())
        .map_err(|e| super::yaml_error(&e))?;
    into_plan(cfg)
}

pub(crate) fn into_plan(cfg: NativeConfig) -> Result<Plan, String> {
    if cfg.api_version != API_VERSION {
        return Err(format!(
            "apiVersion {:?} is not supported (this agent reads {API_VERSION})",
            cfg.api_version
        ));
    }
    if cfg.kind != KIND {
        return Err(format!("kind {:?}: expected {KIND}", cfg.kind));
    }
    check(&cfg)?;
    let mut plan = Plan::new(Dialect::Native);
    plan.hostname = cfg.hostname.clone();
    for u in &cfg.users {
        plan.users.push(UserSpec {
            key: format!("users[{}]", plan.users.len()),
            name: u.name.clone(),
            groups: u.groups.clone(),
            ssh_authorized_keys: u.ssh_authorized_keys.clone(),
            shell: u.shell.clone(),
            ..UserSpec::default()
        });
    }
    for (i, f) in cfg.files.iter().enumerate() {
        let mode = match &f.mode {
            Some(m) => super::parse_mode(
                &format!("files[{i}].mode"),
                &Value::String(m.clone()),
                false,
            )?,
            None if f.secret => 0o600,
            None => 0o644,
        };
        plan.files.push(FileSpec {
            key: format!("files[{i}]"),
            path: f.path.clone(),
            contents: Some(f.content.clone().into_bytes()),
            mode: Some(mode),
            owner: Owner::default(),
            append: Vec::new(),
            overwrite: true,
        });
    }
    plan.rke2 = Some(Box::new(cfg));
    Ok(plan)
}

/// Checks what the types cannot: names, duplicate keys, conflicting pass-through keys.
pub fn check(cfg: &NativeConfig) -> Result<(), String> {
    if let Some(h) = &cfg.hostname {
        if !plan::valid_hostname(h) {
            return Err(format!("hostname {h:?} is not a valid hostname"));
        }
    }
    if cfg.files.len() > super::MAX_ENTRIES || cfg.nodes.len() > super::MAX_ENTRIES {
        return Err(format!("more than {} files or nodes", super::MAX_ENTRIES));
    }
    let mut total = 0usize;
    for f in &cfg.files {
        total += f.content.len();
        crate::atomic::components(&f.path).map_err(|e| format!("files: {e}"))?;
    }
    if total > super::MAX_DECODED_BYTES {
        return Err("files: contents exceed the size limit".into());
    }
    let check_passthrough = |what: &str, m: &BTreeMap<String, Value>| -> Result<(), String> {
        for k in m.keys() {
            if let Some((_, instead)) = STRUCTURED_KEYS
                .iter()
                .find(|(key, _)| k.trim_end_matches('+') == *key)
            {
                return Err(format!("{what}.{k}: set {instead} instead"));
            }
        }
        Ok(())
    };
    check_passthrough("cluster.config", &cfg.cluster.config)?;
    check_passthrough("cluster.server-config", &cfg.cluster.server_config)?;
    check_passthrough("cluster.agent-config", &cfg.cluster.agent_config)?;
    for (name, _) in cfg
        .cluster
        .manifests
        .iter()
        .chain(cfg.cluster.helm_chart_configs.iter())
    {
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || name.starts_with('.')
            || name.is_empty()
        {
            return Err(format!(
                "cluster.manifests / helm-chart-configs: {name:?} must be a plain file or chart \
                 name (letters, digits, '-', '_', '.')"
            ));
        }
    }
    for (i, n) in cfg.nodes.iter().enumerate() {
        if !plan::valid_hostname(&n.hostname) {
            return Err(format!(
                "nodes[{i}].hostname {:?} is not a valid hostname",
                n.hostname
            ));
        }
        check_passthrough(&format!("nodes[{i}].config"), &n.config)?;
        if n.initializer && n.role != Role::Server {
            return Err(format!(
                "nodes[{i}] ({}): only a server can be the initializer",
                n.hostname
            ));
        }
        let m = &n.matches;
        if m.mac.is_none() && m.uuid.is_none() && m.serial.is_none() && m.hostname.is_none() {
            return Err(format!(
                "nodes[{i}] ({}): match needs at least one of mac, uuid, serial, hostname",
                n.hostname
            ));
        }
        if let Some(macs) = &m.mac {
            for mac in macs.to_vec() {
                if crate::identity::normalize_mac(&mac).is_none() {
                    return Err(format!("nodes[{i}].match.mac {mac:?} is not a MAC address"));
                }
            }
        }
        if let Some(inst) = &n.install {
            install::check_section(&format!("nodes[{i}].install"), inst)?;
        }
        if let Some(net) = &n.network {
            let key = format!("nodes[{i}].network");
            network::check(&key, net).map_err(|e| e.to_string())?;
            if net.interface.is_none() && m.mac.is_none() {
                return Err(network::interface_required(&key).to_string());
            }
        }
    }
    check_unique_addresses(cfg)?;
    if let Some(inst) = &cfg.install {
        install::check_section("install", inst)?;
    }
    if let Some(net) = &cfg.network {
        if !cfg.nodes.is_empty() {
            return Err(
                "network: with a nodes list set nodes[].network per node instead of a top-level \
                 network"
                    .into(),
            );
        }
        network::check("network", net).map_err(|e| e.to_string())?;
        if net.interface.is_none() {
            return Err(network::interface_required("network").to_string());
        }
    }
    let inits: Vec<&str> = cfg
        .nodes
        .iter()
        .filter(|n| n.initializer)
        .map(|n| n.hostname.as_str())
        .collect();
    if inits.len() > 1 {
        return Err(format!(
            "nodes: {} servers are marked initializer ({}); exactly one server may bootstrap the \
             cluster",
            inits.len(),
            inits.join(", ")
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &cfg.nodes {
        if !seen.insert(n.hostname.as_str()) {
            return Err(format!("nodes: hostname {:?} appears twice", n.hostname));
        }
    }
    if !cfg.nodes.is_empty() {
        if cfg.hostname.is_some() || cfg.role.is_some() {
            return Err(
                "top-level hostname/role are for single-node configurations; with a nodes list \
                 set them per node"
                    .into(),
            );
        }
        if cfg.cluster.token.is_none() {
            return Err("cluster.token is required for a cluster configuration".into());
        }
        if inits.is_empty() && cfg.cluster.server.is_none() {
            return Err(
                "nodes: no initializer and no cluster.server; mark one server `initializer: true` \
                 or set cluster.server to join an existing cluster"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Two nodes configured with the same address would fight over it on the wire.
fn check_unique_addresses(cfg: &NativeConfig) -> Result<(), String> {
    let mut seen: BTreeMap<std::net::IpAddr, usize> = BTreeMap::new();
    for (i, n) in cfg.nodes.iter().enumerate() {
        let Some(net) = &n.network else { continue };
        for (j, a) in net.addresses.iter().enumerate() {
            let Some(c) = network::Cidr::parse(a) else {
                continue;
            };
            if let Some(other) = seen.insert(c.addr, i) {
                if other != i {
                    return Err(format!(
                        "nodes[{i}].network.addresses[{j}]: {} is also nodes[{other}]'s ({}) \
                         address; give each node its own",
                        c.addr, cfg.nodes[other].hostname
                    ));
                }
            }
        }
    }
    Ok(())
}
