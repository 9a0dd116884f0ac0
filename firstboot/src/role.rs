//! Which node of a cluster configuration this machine is, and what that makes it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dialects::native::{NativeConfig, Role};
use crate::identity::{normalize_mac, Identity};
use crate::network::{self, NetworkPlan};

/// Port of the RKE2 supervisor (join endpoint).
pub const SUPERVISOR_PORT: u16 = 9345;

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "no node in the configuration matches this machine ({identity}); add a nodes[] entry \
         matching one of these"
    )]
    NoMatch { identity: String },
    #[error("this machine ({identity}) matches several nodes: {nodes}; make the matches unique")]
    Ambiguous { identity: String, nodes: String },
    #[error("{0}")]
    Invalid(String),
}

/// What this machine becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub hostname: Option<String>,
    pub role: Role,
    /// Bootstraps a new cluster (no `server:` key).
    pub initializer: bool,
    /// `https://host:9345` for every node but the initializer.
    pub server_url: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    /// This node's own pass-through RKE2 keys (override the cluster-wide ones).
    pub extra: BTreeMap<String, Value>,
    /// Static addressing for this machine, resolved to its link.
    pub network: Option<NetworkPlan>,
}

/// Normalises a server address to `https://host:port` (default port 9345).
pub fn server_url(addr: &str) -> Result<String, RoleError> {
    let bad = || {
        RoleError::Invalid(format!(
            "server address {addr:?}: expected host, host:port or https://host:port"
        ))
    };
    let rest = match addr.split_once("://") {
        Some(("https", r)) => r,
        Some(_) => return Err(bad()),
        None => addr,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty()
        || rest.contains('/')
        || rest.contains('@')
        || rest.contains(char::is_whitespace)
    {
        return Err(bad());
    }
    let has_port = if rest.starts_with('[') {
        rest.contains("]:")
    } else {
        rest.matches(':').count() == 1
    };
    if rest.matches(':').count() > 1 && !rest.starts_with('[') {
        // A bare IPv6 address.
        return Ok(format!("https://[{rest}]:{SUPERVISOR_PORT}"));
    }
    if has_port {
        Ok(format!("https://{rest}"))
    } else {
        Ok(format!("https://{rest}:{SUPERVISOR_PORT}"))
    }
}

fn matches(n: &crate::dialects::native::NodeSpec, id: &Identity) -> bool {
    let m = &n.matches;
    let mac = m.mac.as_ref().is_some_and(|macs| {
        macs.to_vec()
            .iter()
            .filter_map(|x| normalize_mac(x))
            .any(|x| id.macs.contains(&x))
    });
    let uuid = m
        .uuid
        .as_ref()
        .is_some_and(|u| id.uuid.as_deref() == Some(u.to_ascii_lowercase().as_str()));
    let serial = m
        .serial
        .as_ref()
        .is_some_and(|s| id.serial.as_deref() == Some(s.as_str()));
    let host = m
        .hostname
        .as_ref()
        .is_some_and(|h| id.hostname.as_deref() == Some(h.as_str()));
    mac || uuid || serial || host
}

/// Resolves this machine's assignment from a (checked) native configuration.
pub fn resolve(cfg: &NativeConfig, id: &Identity) -> Result<Assignment, RoleError> {
    let cluster_server = cfg.cluster.server.as_deref().map(server_url).transpose()?;
    if cfg.nodes.is_empty() {
        let role = cfg.role.unwrap_or(Role::Server);
        let initializer = role == Role::Server && cluster_server.is_none();
        if role == Role::Agent && cluster_server.is_none() {
            return Err(RoleError::Invalid(
                "role agent needs cluster.server (the server to join)".into(),
            ));
        }
        if cluster_server.is_some() && cfg.cluster.token.is_none() {
            return Err(RoleError::Invalid(
                "joining a cluster (cluster.server is set) needs cluster.token".into(),
            ));
        }
        return Ok(Assignment {
            hostname: cfg.hostname.clone(),
            role,
            initializer,
            server_url: if initializer { None } else { cluster_server },
            labels: cfg.labels.clone(),
            taints: cfg.taints.clone(),
            extra: BTreeMap::new(),
            network: cfg
                .network
                .as_ref()
                .map(|n| network::resolve("network", n, &[], id))
                .transpose()
                .map_err(|e| RoleError::Invalid(e.to_string()))?,
        });
    }
    let found: Vec<_> = cfg
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches(n, id))
        .collect();
    let (index, node) = match found.as_slice() {
        [] => {
            return Err(RoleError::NoMatch {
                identity: id.to_string(),
            })
        }
        [one] => *one,
        many => {
            return Err(RoleError::Ambiguous {
                identity: id.to_string(),
                nodes: many
                    .iter()
                    .map(|(_, n)| n.hostname.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let server = if node.initializer {
        None
    } else if let Some(s) = cluster_server {
        Some(s)
    } else {
        // Checked: with no cluster.server there is exactly one initializer.
        let init = cfg
            .nodes
            .iter()
            .find(|n| n.initializer)
            .ok_or_else(|| RoleError::Invalid("no initializer and no cluster.server".into()))?;
        let addr = init.address.as_deref().ok_or_else(|| {
            RoleError::Invalid(format!(
                "initializer {} has no address; set its `address` (or cluster.server) so {} can \
                 join",
                init.hostname, node.hostname
            ))
        })?;
        Some(server_url(addr)?)
    };
    let extra = node.config.clone();
    let network = match &node.network {
        Some(n) => {
            let macs = node
                .matches
                .mac
                .as_ref()
                .map(|m| m.to_vec())
                .unwrap_or_default();
            Some(
                network::resolve(&format!("nodes[{index}].network"), n, &macs, id)
                    .map_err(|e| RoleError::Invalid(e.to_string()))?,
            )
        }
        None => None,
    };
    Ok(Assignment {
        hostname: Some(node.hostname.clone()),
        role: node.role,
        initializer: node.initializer,
        server_url: server,
        labels: node.labels.clone(),
        taints: node.taints.clone(),
        extra,
        network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(server_url("10.0.0.1").unwrap(), "https://10.0.0.1:9345");
        assert_eq!(
            server_url("lb.example:443").unwrap(),
            "https://lb.example:443"
        );
        assert_eq!(server_url("https://lb:9345/").unwrap(), "https://lb:9345");
        assert_eq!(server_url("fd00::1").unwrap(), "https://[fd00::1]:9345");
        assert!(server_url("http://x").is_err());
        assert!(server_url("x/y").is_err());
    }
}
