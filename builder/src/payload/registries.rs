//! Registries, extra manifests and proxy settings baked from the definition. Node config can
//! override all of them at first boot.
//!
//! - `registries.yaml` -> `/etc/rancher/rke2/registries.yaml` (checked: only `mirrors` and
//!   `configs`, as rke2 reads it)
//! - manifests -> `/usr/share/rke2-image/manifests/`, for the first-boot agent to link into
//!   `/var/lib/rancher/rke2/server/manifests/` on servers (`/var` is node state)
//! - proxy -> `/etc/default/rke2-server` and `/etc/default/rke2-agent` (the units read them)

use std::collections::BTreeMap;

use rke2_image_contract::paths::BAKED_MANIFESTS;

use super::{Options, PayloadError, Rke2Spec};
use crate::tree::{Blob, Inode, Kind, Tree};

pub const REGISTRIES: &str = "etc/rancher/rke2/registries.yaml";

fn read(p: &std::path::Path) -> Result<Vec<u8>, PayloadError> {
    std::fs::read(p).map_err(|source| PayloadError::Io {
        path: p.to_path_buf(),
        source,
    })
}

pub fn apply(tree: &mut Tree, spec: &Rke2Spec, opts: &Options) -> Result<(), PayloadError> {
    let e = opts.epoch;
    if let Some(r) = &spec.registries {
        let data = read(r)?;
        let text = String::from_utf8(data.clone())
            .map_err(|_| PayloadError::Invalid(format!("{}: not UTF-8", r.display())))?;
        let doc: BTreeMap<String, serde_json::Value> =
            serde_saphyr::from_str(&text).map_err(|e| {
                PayloadError::Invalid(format!(
                    "{}: not a registries.yaml mapping: {e}",
                    r.display()
                ))
            })?;
        if let Some(k) = doc.keys().find(|k| *k != "mirrors" && *k != "configs") {
            return Err(PayloadError::Invalid(format!(
                "{}: unknown key {k:?}; registries.yaml has `mirrors` and `configs`",
                r.display()
            )));
        }
        // Credentials may be inside: readable by root only.
        tree.insert_resolved(
            REGISTRIES.as_bytes(),
            Inode::new(Kind::File(Blob::bytes(data)), 0o600, 0, 0, e),
        )?;
    }
    for m in &spec.manifests {
        let data = read(m)?;
        let text = String::from_utf8(data.clone())
            .map_err(|_| PayloadError::Invalid(format!("{}: not UTF-8", m.display())))?;
        for doc in text.split("\n---") {
            let _: Option<serde_json::Value> = serde_saphyr::from_str(doc).map_err(|e| {
                PayloadError::Invalid(format!("{}: not valid YAML: {e}", m.display()))
            })?;
        }
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tree.insert_resolved(
            format!("{BAKED_MANIFESTS}/{name}").as_bytes(),
            Inode::new(Kind::File(Blob::bytes(data)), 0o644, 0, 0, e),
        )?;
    }
    if let Some(p) = &spec.proxy {
        let mut env = String::new();
        for (k, v) in [
            ("HTTP_PROXY", &p.http_proxy),
            ("HTTPS_PROXY", &p.https_proxy),
            ("NO_PROXY", &p.no_proxy),
        ] {
            if let Some(v) = v {
                env.push_str(&format!("{k}=\"{v}\"\n"));
            }
        }
        for role in ["server", "agent"] {
            tree.insert_resolved(
                format!("etc/default/rke2-{role}").as_bytes(),
                Inode::new(Kind::File(Blob::bytes(env.clone())), 0o644, 0, 0, e),
            )?;
        }
    }
    Ok(())
}
