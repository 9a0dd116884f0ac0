//! Fixtures of real-world style rendered into temporary roots and compared file by file
//! (content, mode, owner) with expected trees; then checked with tools nobody here wrote.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs;
use std::path::Path;

use common::*;
use rke2_firstboot::agent;
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;

fn render(case: &str, origin: &str, bytes: Vec<u8>, id: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    seed(t.path());
    let loaded = load(origin, bytes, &Identity::from_args(id).unwrap());
    agent::render_to(&Root::new(t.path()), &loaded, &mut |_| Ok(())).unwrap();
    check_tree(t.path(), case);
    accounts_oracle(t.path());
    t
}

/// pwck/grpck (shadow-utils) check the rendered account files inside the root (`-R`).
fn accounts_oracle(root: &Path) {
    let r = root.display().to_string();
    let out = tool("pwck", &["-r", "-R", &r]).expect("pwck");
    // Login shells are not in the test root; everything else pwck reports is a defect.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.contains("program") && l.contains("does not exist")) && *l != "pwck: no changes"
        })
        .collect();
    assert!(bad.is_empty(), "pwck: {text}");
    let out = tool("grpck", &["-r", "-R", &r]).expect("grpck");
    assert!(
        out.status.success(),
        "grpck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PyYAML reads config.yaml to the same keys we meant to write.
fn yaml_oracle(file: &Path, want_json: &str) {
    let script = "import sys, yaml, json; print(json.dumps(yaml.safe_load(open(sys.argv[1])), sort_keys=True))";
    match tool("python3", &["-c", script, &file.display().to_string()]) {
        Some(o) if o.status.success() => {
            let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let want: serde_json::Value = serde_json::from_str(want_json).unwrap();
            assert_eq!(got, want, "{}", file.display());
        }
        _ => println!("SKIPPED yaml oracle (python3 with PyYAML not installed)"),
    }
}

fn ssh_keys_oracle(file: &Path, n: usize) {
    let o = tool("ssh-keygen", &["-l", "-f", &file.display().to_string()]).expect("ssh-keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), n);
}

#[test]
fn native_cluster_initializer() {
    let t = render(
        "cluster-cp-1",
        "cluster.yaml",
        example("cluster.yaml"),
        &["mac=52:54:00:00:01:01"],
    );
    yaml_oracle(
        &t.path().join("etc/rancher/rke2/config.yaml"),
        r#"{"agent-token":"K10a8d2f0c2d6e3c0a7e1f3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8a9::node:9b8a7c6d5e4f3a21",
            "cluster-cidr":"10.42.0.0/16","cni":["canal"],"kube-apiserver-arg":["audit-log-maxage=30"],
            "node-label":["topology.kubernetes.io/zone=a"],"node-name":"cp-1","profile":"cis","selinux":true,
            "service-cidr":"10.43.0.0/16","tls-san":["k8s.example.internal","10.0.0.100"],
            "token":"K10a8d2f0c2d6e3c0a7e1f3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8a9::server:4f1c2a9e7b3d5f60",
            "write-kubeconfig-mode":"0600"}"#,
    );
    yaml_oracle(
        &t.path().join("etc/rancher/rke2/registries.yaml"),
        r#"{"configs":{"registry.example.internal:5000":{"auth":{"password":"pull-secret","username":"puller"},
            "tls":{"ca_file":"/etc/ssl/certs/registry-ca.pem"}}},
            "mirrors":{"docker.io":{"endpoint":["https://registry.example.internal:5000"]}}}"#,
    );
    yaml_oracle(
        &t.path()
            .join("var/lib/rancher/rke2/server/manifests/rke2-canal-config.yaml"),
        r#"{"apiVersion":"helm.cattle.io/v1","kind":"HelmChartConfig",
            "metadata":{"name":"rke2-canal","namespace":"kube-system"},
            "spec":{"valuesContent":"flannel:\n  iface: eth0\n"}}"#,
    );
}

#[test]
fn native_cluster_joining_server_by_uuid() {
    let t = render(
        "cluster-cp-2",
        "cluster.yaml",
        example("cluster.yaml"),
        &[
            "uuid=6F1D7A3E-0C4B-4D0F-9A55-2B1C3D4E5F60",
            "mac=52:54:00:99:99:99",
        ],
    );
    let cfg = fs::read_to_string(t.path().join("etc/rancher/rke2/config.yaml")).unwrap();
    assert!(cfg.contains("server: https://10.0.0.11:9345\n"), "{cfg}");
}

#[test]
fn native_cluster_agent_by_second_mac() {
    let t = render(
        "cluster-worker-1",
        "cluster.yaml",
        example("cluster.yaml"),
        &["mac=52:54:00:00:02:02"],
    );
    yaml_oracle(
        &t.path().join("etc/rancher/rke2/config.yaml"),
        r#"{"node-label":["node-role.example.internal/worker=true"],"node-name":"worker-1",
            "node-taint":["dedicated=batch:NoSchedule"],"profile":"cis","selinux":true,
            "server":"https://10.0.0.11:9345",
            "token":"K10a8d2f0c2d6e3c0a7e1f3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8a9::node:9b8a7c6d5e4f3a21"}"#,
    );
}

#[test]
fn native_single_server() {
    let t = render(
        "single-server",
        "single-server.yaml",
        example("single-server.yaml"),
        &[],
    );
    ssh_keys_oracle(&t.path().join("home/ops/.ssh/authorized_keys"), 1);
}

#[test]
fn ignition_v3_fixture() {
    let t = render("ignition", "ignition.ign", fixture("ignition.ign"), &[]);
    ssh_keys_oracle(&t.path().join("home/core/.ssh/authorized_keys"), 1);
}

#[test]
fn cloud_config_fixture() {
    let t = render(
        "cloud-config",
        "cloud-config.yaml",
        fixture("cloud-config.yaml"),
        &[],
    );
    ssh_keys_oracle(&t.path().join("home/ops/.ssh/authorized_keys"), 1);
    ssh_keys_oracle(&t.path().join("root/.ssh/authorized_keys"), 1);
    for s in ["bootcmd.sh", "runcmd.sh"] {
        let p = t.path().join("var/lib/rke2-firstboot").join(s);
        let o = tool("sh", &["-n", &p.display().to_string()]).unwrap();
        assert!(
            o.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn warnings_name_unsupported_keys() {
    let loaded = load(
        "cloud-config.yaml",
        fixture("cloud-config.yaml"),
        &Identity::default(),
    );
    let w = loaded.plan.warnings.join("\n");
    for k in [
        "users[0]",
        "users[1].sudo",
        "package_update",
        "final_message",
    ] {
        assert!(w.contains(k), "no warning for {k}: {w}");
    }
    let v = br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/x","frobnicate":1}]},"extra":true}"#;
    let loaded = load("x.ign", v.to_vec(), &Identity::default());
    let w = loaded.plan.warnings.join("\n");
    assert!(w.contains("storage.files[0].frobnicate"), "{w}");
    assert!(w.contains("extra: unknown key"), "{w}");
}

#[test]
fn validate_examples() {
    for f in ["cluster.yaml", "single-server.yaml", "agent.yaml"] {
        agent::validate(f, &example(f)).unwrap();
    }
}

#[test]
fn airgap_links_unit_location_and_never_both_services() {
    let t = tempfile::tempdir().unwrap();
    seed(t.path());
    let imgs = t.path().join("usr/share/rke2-image/images");
    fs::create_dir_all(&imgs).unwrap();
    for f in [
        "rke2-images-core.linux-amd64.tar.zst",
        "rke2-images-canal.linux-amd64.tar.gz",
        "rke2-images-core.linux-amd64.txt",
        "extra.tar",
    ] {
        fs::write(imgs.join(f), b"x").unwrap();
    }
    fs::create_dir_all(t.path().join("usr/lib/systemd/system")).unwrap();
    fs::write(
        t.path().join("usr/lib/systemd/system/rke2-agent.service"),
        "[Unit]\n",
    )
    .unwrap();
    // A previous (different) configuration had enabled the server.
    let wants = t.path().join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/rke2-server.service",
        wants.join("rke2-server.service"),
    )
    .unwrap();
    // Manifests baked into the image are for servers only.
    let baked = t.path().join("usr/share/rke2-image/manifests");
    fs::create_dir_all(&baked).unwrap();
    fs::write(baked.join("ingress.yaml"), "kind: HelmChartConfig\n").unwrap();
    let loaded = load("agent.yaml", example("agent.yaml"), &Identity::default());
    agent::render_to(&Root::new(t.path()), &loaded, &mut |_| Ok(())).unwrap();
    let links: Vec<String> = dump(t.path())
        .into_iter()
        .filter(|l| {
            l.starts_with("var/lib/rancher/rke2/agent/images/") || l.contains(".target.wants/rke2")
        })
        .collect();
    assert_eq!(
        links,
        vec![
            "etc/systemd/system/multi-user.target.wants/rke2-agent.service l 0777 0:0 -> /usr/lib/systemd/system/rke2-agent.service",
            "var/lib/rancher/rke2/agent/images/extra.tar l 0777 0:0 -> /usr/share/rke2-image/images/extra.tar",
            "var/lib/rancher/rke2/agent/images/rke2-images-canal.linux-amd64.tar.gz l 0777 0:0 -> /usr/share/rke2-image/images/rke2-images-canal.linux-amd64.tar.gz",
            "var/lib/rancher/rke2/agent/images/rke2-images-core.linux-amd64.tar.zst l 0777 0:0 -> /usr/share/rke2-image/images/rke2-images-core.linux-amd64.tar.zst",
        ]
    );
    // Agents get no manifests and no server-only keys.
    assert!(!t.path().join("var/lib/rancher/rke2/server").exists());

    // The same image as a single server: the baked manifest is linked into the server's
    // manifests directory.
    let s = tempfile::tempdir().unwrap();
    seed(s.path());
    let baked = s.path().join("usr/share/rke2-image/manifests");
    fs::create_dir_all(&baked).unwrap();
    fs::write(baked.join("ingress.yaml"), "kind: HelmChartConfig\n").unwrap();
    let loaded = load(
        "single-server.yaml",
        example("single-server.yaml"),
        &Identity::default(),
    );
    agent::render_to(&Root::new(s.path()), &loaded, &mut |_| Ok(())).unwrap();
    let link = s
        .path()
        .join("var/lib/rancher/rke2/server/manifests/ingress.yaml");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/usr/share/rke2-image/manifests/ingress.yaml")
    );
    let cfg = fs::read_to_string(t.path().join("etc/rancher/rke2/config.yaml")).unwrap();
    assert!(
        cfg.contains("server: https://rke2.example.internal:9345\n"),
        "{cfg}"
    );
    assert!(!cfg.contains("tls-san") && !cfg.contains("cni"), "{cfg}");
}
