//! Writes a directory shaped like an official RKE2 release for amd64, as an operator downloads
//! it for an air-gapped install, around the stand-in `rke2` (a test double):
//!
//! - `rke2.linux-amd64.tar.gz`: the bundle with the real file list (no leading directory, 0:0)
//! - `rke2-images-<part>.linux-amd64.tar.zst` and `.tar.gz` plus `.txt` lists for every part,
//!   the legacy `rke2-images.linux-amd64.tar.zst` (core + canal) and `rke2-images-all` list
//! - `sha256sum-amd64.txt` over every file.
//!
//! Image tarballs are `docker save` archives (`manifest.json`, `repositories`, config, one
//! layer per image) with tiny layers. Everything is deterministic.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::buildinfo;

pub use rke2_image_contract::release::IMAGE_PARTS as PARTS;

#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// e.g. `v1.31.5+rke2r1`.
    pub version: String,
    /// Record `GOEXPERIMENT=boringcrypto` in the stand-in's build info (real releases do).
    pub boringcrypto: bool,
    /// zstd window log of the `.tar.zst` archives (real releases: 25).
    pub zstd_window_log: u32,
    /// Image references to leave out of every tarball while keeping them in the lists.
    pub drop_images: Vec<String>,
}

impl FixtureOptions {
    pub fn new(version: &str) -> FixtureOptions {
        FixtureOptions {
            version: version.into(),
            boringcrypto: true,
            zstd_window_log: 25,
            drop_images: Vec::new(),
        }
    }
}

/// The images of each part, as the release's `.txt` lists name them.
pub fn image_lists(version: &str) -> BTreeMap<&'static str, Vec<String>> {
    let tag = version.replace('+', "-");
    let k8s = version.split('+').next().unwrap_or(version);
    let mut m = BTreeMap::new();
    let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    m.insert(
        "core",
        vec![
            "docker.io/rancher/hardened-coredns:v1.12.0-build20241126".to_string(),
            "docker.io/rancher/hardened-etcd:v3.5.16-k3s1-build20241106".into(),
            format!("docker.io/rancher/hardened-kubernetes:{k8s}-rke2r1-build20250115"),
            "docker.io/rancher/klipper-helm:v0.9.3-build20241008".into(),
            "docker.io/rancher/mirrored-pause:3.6".into(),
            format!("docker.io/rancher/rke2-runtime:{tag}"),
        ],
    );
    m.insert(
        "canal",
        l(&[
            "docker.io/rancher/hardened-calico:v3.29.1-build20250117",
            "docker.io/rancher/hardened-flannel:v0.26.3-build20250117",
        ]),
    );
    m.insert(
        "cilium",
        l(&[
            "docker.io/rancher/mirrored-cilium-cilium:v1.16.5",
            "docker.io/rancher/mirrored-cilium-operator-generic:v1.16.5",
        ]),
    );
    m.insert(
        "calico",
        l(&[
            "docker.io/rancher/mirrored-calico-operator:v1.36.2",
            "docker.io/rancher/mirrored-calico-node:v3.29.1",
        ]),
    );
    m.insert(
        "multus",
        l(&["docker.io/rancher/hardened-multus-cni:v4.1.4-build20250108"]),
    );
    m.insert(
        "flannel",
        l(&["docker.io/rancher/hardened-flannel:v0.26.3-build20250117"]),
    );
    m.insert(
        "ingress-nginx",
        l(&["docker.io/rancher/nginx-ingress-controller:v1.12.0-hardened1"]),
    );
    m.insert(
        "harvester",
        l(&["docker.io/rancher/harvester-cloud-provider:v0.2.5"]),
    );
    m.insert(
        "vsphere",
        l(&["docker.io/rancher/mirrored-cloud-provider-vsphere:v1.31.0"]),
    );
    m
}

fn tar_header(path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("fixture paths are short");
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let h = tar_header(path, data.len() as u64, mode);
    b.append(&h, data)?;
    Ok(())
}

/// A `docker save` archive of `images` (uncompressed tar bytes).
pub fn docker_save(images: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for image in images {
        // A one-file layer whose content depends on the reference.
        let mut layer = tar::Builder::new(Vec::new());
        let content = format!("image {image}\n");
        append(&mut layer, "etc/image-ref", content.as_bytes(), 0o644)?;
        let layer = layer.into_inner()?;
        let diff_id = hex::encode(Sha256::digest(&layer));
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        });
        let config = serde_json::to_vec(&config)?;
        let config_id = hex::encode(Sha256::digest(&config));
        // `docker save` writes references without the docker.io/ prefix.
        let short = image
            .strip_prefix("docker.io/")
            .unwrap_or(image)
            .to_string();
        manifest.push(serde_json::json!({
            "Config": format!("{config_id}.json"),
            "RepoTags": [short.clone()],
            "Layers": [format!("{diff_id}/layer.tar")],
        }));
        let (repo, tag) = short.rsplit_once(':').unwrap_or((&short, "latest"));
        repositories
            .entry(repo.to_string())
            .or_default()
            .insert(tag.to_string(), diff_id.clone());
        files.push((format!("{config_id}.json"), config));
        files.push((format!("{diff_id}/layer.tar"), layer));
    }
    append(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest)?,
        0o644,
    )?;
    append(
        &mut b,
        "repositories",
        &serde_json::to_vec(&repositories)?,
        0o644,
    )?;
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    for (p, d) in files {
        append(&mut b, &p, &d, 0o644)?;
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn zstd_long(data: &[u8], window_log: u32) -> anyhow::Result<Vec<u8>> {
    let mut e = zstd::stream::Encoder::new(Vec::new(), 19)?;
    e.long_distance_matching(true)?;
    e.window_log(window_log)?;
    e.include_contentsize(false)?;
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// The bundle's `share/rke2/rke2-cis-sysctl.conf` as rke2 ships it.
pub const CIS_SYSCTL: &str =
    "vm.panic_on_oom=0\nvm.overcommit_memory=1\nkernel.panic=10\nkernel.panic_on_oops=1\n";

/// The bundle's unit file for `role` (`server` or `agent`), as rke2 ships it.
pub fn unit(role: &str) -> String {
    let other = if role == "server" { "agent" } else { "server" };
    format!(
        "[Unit]
Description=Rancher Kubernetes Engine v2 ({role})
Documentation=https://github.com/rancher/rke2#readme
Wants=network-online.target
After=network-online.target
Conflicts=rke2-{other}.service

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/usr/local/lib/systemd/system/%N.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service'
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/rke2 {role}
ExecStopPost=-/bin/sh -c \"systemd-cgls /system.slice/%n | grep -Eo '[0-9]+ (containerd|kubelet)' | awk '{{print $2}}' | xargs -r kill\"
"
    )
}

/// Writes the release into `dir` (created if missing) around the stand-in binary at `rke2`.
pub fn write_release(dir: &Path, rke2: &Path, o: &FixtureOptions) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let mut bin = fs::read(rke2)?;
    let go = if o.boringcrypto {
        "go1.23.6 X:boringcrypto"
    } else {
        "go1.23.6"
    };
    buildinfo::rewrite(
        &mut bin,
        &buildinfo::encode(go, &buildinfo::rke2_settings(&o.version, o.boringcrypto)),
    )?;
    let mut bundle = tar::Builder::new(Vec::new());
    append(&mut bundle, "bin/rke2", &bin, 0o755)?;
    append(
        &mut bundle,
        "bin/rke2-killall.sh",
        b"#!/bin/sh\n# stand-in: stops rke2 processes and unmounts its state\nexit 0\n",
        0o755,
    )?;
    append(
        &mut bundle,
        "bin/rke2-uninstall.sh",
        b"#!/bin/sh\n# stand-in: removes rke2 from a host\nexit 0\n",
        0o755,
    )?;
    for role in ["server", "agent"] {
        append(
            &mut bundle,
            &format!("lib/systemd/system/rke2-{role}.service"),
            unit(role).as_bytes(),
            0o644,
        )?;
        append(
            &mut bundle,
            &format!("lib/systemd/system/rke2-{role}.env"),
            b"HOME=/root\n",
            0o644,
        )?;
    }
    append(
        &mut bundle,
        "share/rke2/rke2-cis-sysctl.conf",
        CIS_SYSCTL.as_bytes(),
        0o644,
    )?;
    append(
        &mut bundle,
        "share/rke2/LICENSE.txt",
        b"Apache License 2.0 (stand-in)\n",
        0o644,
    )?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "rke2.linux-amd64.tar.gz".into(),
        gzip(&bundle.into_inner()?)?,
    );

    let lists = image_lists(&o.version);
    let keep = |v: &[String]| {
        v.iter()
            .filter(|i| !o.drop_images.contains(i))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut all: Vec<String> = Vec::new();
    for (part, images) in &lists {
        let tar = docker_save(&keep(images))?;
        files.insert(
            format!("rke2-images-{part}.linux-amd64.tar.zst"),
            zstd_long(&tar, o.zstd_window_log)?,
        );
        files.insert(
            format!("rke2-images-{part}.linux-amd64.tar.gz"),
            gzip(&tar)?,
        );
        files.insert(
            format!("rke2-images-{part}.linux-amd64.txt"),
            (images.join("\n") + "\n").into_bytes(),
        );
        all.extend(images.iter().cloned());
    }
    let mut legacy: Vec<String> = lists["core"]
        .iter()
        .chain(&lists["canal"])
        .cloned()
        .collect();
    legacy.sort();
    legacy.dedup();
    files.insert(
        "rke2-images.linux-amd64.tar.zst".into(),
        zstd_long(&docker_save(&keep(&legacy))?, o.zstd_window_log)?,
    );
    files.insert(
        "rke2-images.linux-amd64.txt".into(),
        (legacy.join("\n") + "\n").into_bytes(),
    );
    all.sort();
    all.dedup();
    files.insert(
        "rke2-images-all.linux-amd64.txt".into(),
        (all.join("\n") + "\n").into_bytes(),
    );

    let mut sums = String::new();
    for (name, data) in &files {
        fs::write(dir.join(name), data)?;
        sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(data))));
    }
    fs::write(dir.join("sha256sum-amd64.txt"), sums)?;
    Ok(())
}
