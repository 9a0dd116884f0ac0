//! RKE2 files for one node: config.yaml, registries.yaml, the proxy environment, manifests.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dialects::native::{NativeConfig, Role};
use crate::role::Assignment;

pub const CONFIG_YAML: &str = "/etc/rancher/rke2/config.yaml";
pub const REGISTRIES_YAML: &str = "/etc/rancher/rke2/registries.yaml";
pub const CONFIG_DIR: &str = "/etc/rancher/rke2";
pub const MANIFESTS_DIR: &str = "/var/lib/rancher/rke2/server/manifests";
pub const AGENT_IMAGES_DIR: &str = "/var/lib/rancher/rke2/agent/images";

const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum Rke2Error {
    #[error("cannot serialise {what}: {msg}")]
    Serialize { what: &'static str, msg: String },
    #[error("proxy setting {key}: must not contain newlines or quotes")]
    BadProxy { key: &'static str },
}

/// The token this node presents: agents prefer `agent-token`.
pub fn join_token<'a>(cfg: &'a NativeConfig, a: &Assignment) -> Option<&'a str> {
    match a.role {
        Role::Agent => cfg
            .cluster
            .agent_token
            .as_ref()
            .or(cfg.cluster.token.as_ref()),
        Role::Server => cfg.cluster.token.as_ref(),
    }
    .map(|s| s.0.as_str())
}

/// The keys of `/etc/rancher/rke2/config.yaml`, sorted.
pub fn config_map(cfg: &NativeConfig, a: &Assignment) -> BTreeMap<String, Value> {
    let c = &cfg.cluster;
    let mut m: BTreeMap<String, Value> = c.config.clone();
    m.extend(match a.role {
        Role::Server => c.server_config.clone(),
        Role::Agent => c.agent_config.clone(),
    });
    m.extend(a.extra.clone());
    let s = |v: &str| Value::String(v.to_string());
    let list = |v: &[String]| Value::Array(v.iter().map(|x| s(x)).collect());
    if let Some(url) = &a.server_url {
        m.insert("server".into(), s(url));
    }
    if let Some(t) = join_token(cfg, a) {
        m.insert("token".into(), s(t));
    }
    if a.role == Role::Server {
        if let Some(t) = &c.agent_token {
            m.insert("agent-token".into(), s(&t.0));
        }
        if !c.tls_san.is_empty() {
            m.insert("tls-san".into(), list(&c.tls_san));
        }
        if let Some(cni) = &c.cni {
            m.insert("cni".into(), list(&cni.to_vec()));
        }
        if let Some(v) = &c.cluster_cidr {
            m.insert("cluster-cidr".into(), s(v));
        }
        if let Some(v) = &c.service_cidr {
            m.insert("service-cidr".into(), s(v));
        }
    }
    if let Some(h) = &a.hostname {
        m.insert("node-name".into(), s(h));
    }
    if !a.labels.is_empty() {
        let l: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        m.insert("node-label".into(), list(&l));
    }
    if !a.taints.is_empty() {
        m.insert("node-taint".into(), list(&a.taints));
    }
    if let Some(p) = &c.profile {
        m.insert("profile".into(), s(p));
    }
    if let Some(v) = c.selinux {
        m.insert("selinux".into(), Value::Bool(v));
    }
    m
}

/// YAML text of a serialisable value (deterministic: maps are sorted).
pub fn to_yaml<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, Rke2Error> {
    let mut o = serde_saphyr::SerializerOptions::default();
    // Long tokens must stay on one plain line; multi-line values still use `|` blocks.
    o.folded_wrap_chars = usize::MAX / 2;
    serde_saphyr::to_string_with_options(v, o).map_err(|e| Rke2Error::Serialize {
        what,
        msg: e.to_string(),
    })
}

/// `# written by rke2-firstboot` header plus the YAML body.
pub fn config_yaml(cfg: &NativeConfig, a: &Assignment) -> Result<String, Rke2Error> {
    Ok(format!(
        "# Written by rke2-firstboot on first boot.\n{}",
        to_yaml("config.yaml", &config_map(cfg, a))?
    ))
}

pub fn registries_yaml(cfg: &NativeConfig) -> Result<Option<String>, Rke2Error> {
    match &cfg.cluster.registries {
        None => Ok(None),
        Some(r) => Ok(Some(to_yaml("registries.yaml", r)?)),
    }
}

/// `/etc/default/rke2-server` (or `-agent`) with the proxy variables; `NO_PROXY` always
/// includes loopback, the cluster and service CIDRs and the in-cluster DNS suffixes.
pub fn proxy_env(cfg: &NativeConfig) -> Result<Option<String>, Rke2Error> {
    let Some(p) = &cfg.cluster.proxy else {
        return Ok(None);
    };
    let check = |key, v: &str| {
        if v.contains(['\n', '\r', '"', '\'', '\0']) {
            Err(Rke2Error::BadProxy { key })
        } else {
            Ok(())
        }
    };
    let mut out = String::from("# Written by rke2-firstboot on first boot.\n");
    if let Some(h) = &p.http_proxy {
        check("http-proxy", &h.0)?;
        out.push_str(&format!("HTTP_PROXY={}\n", h.0));
    }
    if let Some(h) = &p.https_proxy {
        check("https-proxy", &h.0)?;
        out.push_str(&format!("HTTPS_PROXY={}\n", h.0));
    }
    let c = &cfg.cluster;
    let mut no: Vec<String> = Vec::new();
    let defaults = [
        "127.0.0.1",
        "localhost",
        c.cluster_cidr.as_deref().unwrap_or(DEFAULT_CLUSTER_CIDR),
        c.service_cidr.as_deref().unwrap_or(DEFAULT_SERVICE_CIDR),
        ".svc",
        ".cluster.local",
    ];
    for v in p.no_proxy.iter().map(String::as_str).chain(defaults) {
        check("no-proxy", v)?;
        for part in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            if !no.iter().any(|x| x == part) {
                no.push(part.to_string());
            }
        }
    }
    out.push_str(&format!("NO_PROXY={}\n", no.join(",")));
    Ok(Some(out))
}

/// Manifest files (name -> content) for a server, including generated HelmChartConfigs.
pub fn manifests(cfg: &NativeConfig) -> Result<BTreeMap<String, String>, Rke2Error> {
    let mut out = BTreeMap::new();
    for (name, body) in &cfg.cluster.manifests {
        let file = if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
            name.clone()
        } else {
            format!("{name}.yaml")
        };
        out.insert(file, body.clone());
    }
    for (chart, values) in &cfg.cluster.helm_chart_configs {
        let mut meta = BTreeMap::new();
        meta.insert("name", Value::String(chart.clone()));
        meta.insert("namespace", Value::String("kube-system".into()));
        let mut spec = BTreeMap::new();
        spec.insert("valuesContent", Value::String(values.clone()));
        let doc = serde_json::json!({
            "apiVersion": "helm.cattle.io/v1",
            "kind": "HelmChartConfig",
            "metadata": meta,
            "spec": spec,
        });
        out.insert(
            format!("{chart}-config.yaml"),
            to_yaml("HelmChartConfig", &doc)?,
        );
    }
    Ok(out)
}

/// Air-gap tarball names RKE2 imports (see the agent's image importer).
pub fn is_image_tarball(name: &str) -> bool {
    [
        ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.lz4", ".tar.bz2", ".tbz",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}
