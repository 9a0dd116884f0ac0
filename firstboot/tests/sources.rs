//! Every config source delivering every dialect, through `agent::run` into a temporary root,
//! compared with the expected trees; plus source order and failure behaviour.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rke2_firstboot::agent::{self, AgentError, RunEnv, RunOutcome};
use rke2_firstboot::identity::Identity;
use rke2_firstboot::preflight::Backoff;
use rke2_firstboot::sources::{
    baked::Baked, cmdline_url::CmdlineUrl, config_drive, config_drive::ConfigDrive, esp::Esp,
    fw_cfg::FwCfg, Mounted, Mounter, Source, SourceError,
};

/// (fixture bytes, expected tree, stamp dialect)
fn dialects() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    vec![
        (example("single-server.yaml"), "single-server", "native"),
        (fixture("ignition.ign"), "ignition", "ignition"),
        (
            fixture("cloud-config-os.yaml"),
            "cloud-config-os",
            "cloud-config",
        ),
    ]
}

fn run(root: &Path, sources: Vec<Box<dyn Source>>) -> Result<RunOutcome, AgentError> {
    let env = RunEnv {
        root: root.to_path_buf(),
        sources,
        identity: Identity::from_args(&["mac=52:54:00:12:34:56", "serial=SN 42"]).unwrap(),
        preflight_backoff: None,
        network_apply: None,
        pause_before: None,
        relabel: None,
        live_cmdline: None,
    };
    agent::run(&env, &mut |_| {})
}

fn check(root: &Path, case: &str, dialect: &str, origin: &str) {
    check_tree_except(root, case, &["var/lib/rke2-firstboot/done"]);
    let stamp: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("var/lib/rke2-firstboot/done")).unwrap())
            .unwrap();
    assert_eq!(stamp["dialect"], dialect);
    assert_eq!(stamp["source"], origin);
}

fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        deadline: Duration::from_secs(3),
        request_timeout: Duration::from_secs(2),
    }
}

/// Plain HTTP server: answers 503 `fail_first` times, then serves `body` at `path`.
fn http_server(path: &'static str, body: Vec<u8>, fail_first: usize) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let got = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let n = h.fetch_add(1, Ordering::SeqCst);
            let (st, b) = if n < fail_first {
                ("503 Service Unavailable", b"later".to_vec())
            } else if got == path {
                ("200 OK", body.clone())
            } else {
                ("404 Not Found", b"no".to_vec())
            };
            // Chunked, as many config servers answer.
            let _ = write!(
                c,
                "HTTP/1.1 {st}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
                b.len()
            );
            let _ = c.write_all(&b);
            let _ = c.write_all(b"\r\n0\r\n\r\n");
        }
    });
    (port, hits)
}

#[test]
fn cmdline_url_each_dialect_with_substitution_and_retry() {
    for (bytes, case, dialect) in dialects() {
        let (port, hits) = http_server("/nodes/52:54:00:12:34:56/SN%2042.cfg", bytes, 2);
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let cmdline = format!("quiet rke2.config.url=http://127.0.0.1:{port}/nodes/${{mac}}/${{serial}}.cfg console=ttyS0");
        let src = CmdlineUrl {
            cmdline,
            identity: Identity::from_args(&["mac=52:54:00:12:34:56", "serial=SN 42"]).unwrap(),
            ca_bundle: None,
            backoff: quick(),
        };
        run(t.path(), vec![Box::new(src)]).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3, "two 503s, then the config");
        check(
            t.path(),
            case,
            dialect,
            &format!("rke2.config.url http://127.0.0.1:{port}/nodes/52:54:00:12:34:56/SN%2042.cfg"),
        );
    }
}

#[test]
fn cmdline_url_missing_variable_and_deadline() {
    let src = CmdlineUrl {
        cmdline: "rke2.config.url=http://127.0.0.1:1/${uuid}".into(),
        identity: Identity::default(),
        ca_bundle: None,
        backoff: quick(),
    };
    let e = src.fetch().unwrap_err().to_string();
    assert!(e.contains("uses ${uuid} but this machine has none"), "{e}");
    let (port, _) = http_server("/elsewhere", Vec::new(), 0);
    let mut b = quick();
    b.deadline = Duration::from_millis(200);
    let src = CmdlineUrl {
        cmdline: format!("rke2.config.url=http://127.0.0.1:{port}/cfg"),
        identity: Identity::default(),
        ca_bundle: None,
        backoff: b,
    };
    let e = src.fetch().unwrap_err().to_string();
    assert!(e.contains("HTTP 404") && e.contains("attempts"), "{e}");
    // Without the key the source finds nothing.
    let src = CmdlineUrl {
        cmdline: "quiet".into(),
        identity: Identity::default(),
        ca_bundle: None,
        backoff: quick(),
    };
    assert_eq!(src.fetch().unwrap(), None);
}

fn fw_cfg_dir(sys: &Path, key: &str, bytes: &[u8]) {
    let d = sys.join("firmware/qemu_fw_cfg/by_name").join(key);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("raw"), bytes).unwrap();
}

#[test]
fn fw_cfg_each_dialect() {
    for (bytes, case, dialect) in dialects() {
        for key in ["opt/org.rke2-image/config", "opt/com.coreos/config"] {
            let t = tempfile::tempdir().unwrap();
            let sys = tempfile::tempdir().unwrap();
            seed(t.path());
            fw_cfg_dir(sys.path(), key, &bytes);
            run(
                t.path(),
                vec![Box::new(FwCfg {
                    sys: sys.path().into(),
                })],
            )
            .unwrap();
            check(t.path(), case, dialect, &format!("fw_cfg {key}"));
        }
    }
}

#[test]
fn fw_cfg_prefers_our_key() {
    let sys = tempfile::tempdir().unwrap();
    fw_cfg_dir(sys.path(), "opt/com.coreos/config", b"ign");
    fw_cfg_dir(sys.path(), "opt/org.rke2-image/config", b"ours");
    let f = FwCfg {
        sys: sys.path().into(),
    }
    .fetch()
    .unwrap()
    .unwrap();
    assert_eq!(f.bytes, b"ours");
}

/// "Mounts" a device by handing out a prepared directory, recording what was asked.
struct FakeMounter {
    dir: PathBuf,
    asked: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}
struct FakeMount(PathBuf);
impl Mounted for FakeMount {
    fn dir(&self) -> &Path {
        &self.0
    }
}
impl Mounter for FakeMounter {
    fn mount(&self, device: &Path) -> Result<Box<dyn Mounted>, SourceError> {
        self.asked.lock().unwrap().push(device.to_path_buf());
        Ok(Box::new(FakeMount(self.dir.clone())))
    }
}

fn dev_with_label(label: &str) -> tempfile::TempDir {
    let dev = tempfile::tempdir().unwrap();
    fs::create_dir_all(dev.path().join("disk/by-label")).unwrap();
    std::os::unix::fs::symlink("../../vdb", dev.path().join("disk/by-label").join(label)).unwrap();
    dev
}

#[test]
fn config_drive_nocloud_and_rke2cfg_each_dialect() {
    for (bytes, case, dialect) in dialects() {
        for (label, file) in [
            ("CIDATA", "user-data"),
            ("cidata", "user-data"),
            ("RKE2CFG", "node-config.yaml"),
        ] {
            let t = tempfile::tempdir().unwrap();
            seed(t.path());
            let vol = tempfile::tempdir().unwrap();
            fs::write(vol.path().join(file), &bytes).unwrap();
            if file == "user-data" {
                fs::write(
                    vol.path().join("meta-data"),
                    "instance-id: i-0001\nlocal-hostname: from-meta\n",
                )
                .unwrap();
            }
            let dev = dev_with_label(label);
            let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
            let src = ConfigDrive {
                dev: dev.path().into(),
                mounter: Box::new(FakeMounter {
                    dir: vol.path().into(),
                    asked: asked.clone(),
                }),
            };
            run(t.path(), vec![Box::new(src)]).unwrap();
            assert_eq!(
                *asked.lock().unwrap(),
                vec![dev.path().join("disk/by-label").join(label)]
            );
            let origin = if file == "user-data" {
                "NoCloud config drive user-data".to_string()
            } else {
                format!("RKE2CFG volume {file}")
            };
            check(t.path(), case, dialect, &origin);
        }
    }
}

#[test]
fn nocloud_meta_data_hostname_applies_when_user_data_has_none() {
    let vol = tempfile::tempdir().unwrap();
    fs::write(
        vol.path().join("user-data"),
        "#cloud-config\nruncmd: [\"true\"]\n",
    )
    .unwrap();
    fs::write(
        vol.path().join("meta-data"),
        "{\"instance-id\": \"i-1\", \"local-hostname\": \"meta-host\"}",
    )
    .unwrap();
    let f = config_drive::read_volume(vol.path(), config_drive::Kind::NoCloud)
        .unwrap()
        .unwrap();
    assert_eq!(f.meta_hostname.as_deref(), Some("meta-host"));
    let t = tempfile::tempdir().unwrap();
    seed(t.path());
    let dev = dev_with_label("CIDATA");
    let src = ConfigDrive {
        dev: dev.path().into(),
        mounter: Box::new(FakeMounter {
            dir: vol.path().into(),
            asked: Default::default(),
        }),
    };
    let out = run(t.path(), vec![Box::new(src)]).unwrap();
    assert_eq!(
        out,
        RunOutcome::Configured {
            unit: None,
            also_start: vec!["rke2-firstboot-runcmd.service"]
        }
    );
    assert_eq!(
        fs::read_to_string(t.path().join("etc/hostname")).unwrap(),
        "meta-host\n"
    );
}

#[test]
fn broken_config_drive_is_an_error_not_a_fallthrough() {
    let vol = tempfile::tempdir().unwrap();
    fs::write(vol.path().join("meta-data"), "instance-id: x\n").unwrap();
    let dev = dev_with_label("CIDATA");
    let t = tempfile::tempdir().unwrap();
    seed(t.path());
    fs::create_dir_all(t.path().join("usr/share/rke2-image")).unwrap();
    fs::write(
        t.path().join("usr/share/rke2-image/node-config.yaml"),
        example("single-server.yaml"),
    )
    .unwrap();
    let e = run(
        t.path(),
        vec![
            Box::new(ConfigDrive {
                dev: dev.path().into(),
                mounter: Box::new(FakeMounter {
                    dir: vol.path().into(),
                    asked: Default::default(),
                }),
            }),
            Box::new(Baked {
                root: t.path().into(),
            }),
        ],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("volume has no user-data file"),
        "{e}"
    );
    assert!(!t.path().join("etc/rancher").exists());
}

#[test]
fn esp_each_dialect() {
    for (bytes, case, dialect) in dialects() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let esp = tempfile::tempdir().unwrap();
        fs::create_dir_all(esp.path().join("EFI/BOOT")).unwrap();
        fs::create_dir_all(esp.path().join("rke2-image")).unwrap();
        fs::write(esp.path().join("rke2-image/node-config.yaml"), &bytes).unwrap();
        let src = Esp {
            mounted: vec![t.path().join("efi"), esp.path().into()],
            dev: t.path().join("dev"),
            mounter: Box::new(FakeMounter {
                dir: "/nonexistent".into(),
                asked: Default::default(),
            }),
        };
        run(t.path(), vec![Box::new(src)]).unwrap();
        check(t.path(), case, dialect, "ESP rke2-image/node-config.yaml");
    }
}

/// The embed area in an ISO written by xorriso (the oracle for the ISO 9660 layout), as the
/// boot medium `sr0` under a fake `/sys` and `/dev`: each dialect through `run`.
#[test]
fn boot_iso_medium_each_dialect() {
    use rke2_firstboot::sources::medium::Medium;
    use rke2_image_contract::embed;
    if !rke2_testsupport::prereq::program("xorriso", "xorriso") {
        return;
    }
    for (bytes, case, dialect) in dialects() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let w = tempfile::tempdir().unwrap();
        let tree = w.path().join("tree/rke2");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("root.img"), b"root").unwrap();
        fs::write(
            tree.join("config.img"),
            embed::encode(&bytes, embed::AREA_BYTES).unwrap(),
        )
        .unwrap();
        fs::create_dir_all(w.path().join("dev")).unwrap();
        fs::create_dir_all(w.path().join("sys/class/block/sr0")).unwrap();
        fs::write(w.path().join("sys/class/block/sr0/dev"), "11:0\n").unwrap();
        rke2_testsupport::iso::mkisofs(&w.path().join("tree"), &w.path().join("dev/sr0"), &[])
            .unwrap();
        let src = Medium {
            cmdline: "ro rke2.root=iso".into(),
            sys: w.path().join("sys"),
            dev: w.path().join("dev"),
        };
        run(t.path(), vec![Box::new(src)]).unwrap();
        let origin = format!("/rke2/config.img on {}", w.path().join("dev/sr0").display());
        check(t.path(), case, dialect, &origin);
    }
}

#[test]
fn baked_each_dialect() {
    for (bytes, case, dialect) in dialects() {
        let t = tempfile::tempdir().unwrap();
        seed(t.path());
        let img = tempfile::tempdir().unwrap();
        fs::create_dir_all(img.path().join("usr/share/rke2-image")).unwrap();
        fs::write(
            img.path().join("usr/share/rke2-image/node-config.yaml"),
            &bytes,
        )
        .unwrap();
        run(
            t.path(),
            vec![Box::new(Baked {
                root: img.path().into(),
            })],
        )
        .unwrap();
        check(
            t.path(),
            case,
            dialect,
            "image /usr/share/rke2-image/node-config.yaml",
        );
    }
}

#[test]
fn first_found_wins_and_nothing_found_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    seed(t.path());
    let sys = tempfile::tempdir().unwrap();
    fw_cfg_dir(
        sys.path(),
        "opt/com.coreos/config",
        &fixture("ignition.ign"),
    );
    fs::create_dir_all(t.path().join("usr/share/rke2-image")).unwrap();
    fs::write(
        t.path().join("usr/share/rke2-image/node-config.yaml"),
        example("single-server.yaml"),
    )
    .unwrap();
    run(
        t.path(),
        vec![
            Box::new(FwCfg {
                sys: sys.path().into(),
            }),
            Box::new(Baked {
                root: t.path().into(),
            }),
        ],
    )
    .unwrap();
    assert!(t.path().join("home/core").exists() && !t.path().join("etc/rancher").exists());

    let t = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = run(
        t.path(),
        vec![
            Box::new(FwCfg {
                sys: empty.path().into(),
            }),
            Box::new(Baked {
                root: empty.path().into(),
            }),
        ],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no configuration found (tried: QEMU fw_cfg, defaults baked into the image)"
    );
    assert!(
        fs::read_to_string(t.path().join("var/lib/rke2-firstboot/failed"))
            .unwrap()
            .contains("no configuration found")
    );
}

/// A live boot (the installation medium) with an install request installs instead of
/// configuring: nothing is written to the root. A disk boot with the same configuration
/// configures as usual (an installed node never installs again).
#[test]
fn live_boot_with_install_request_writes_nothing() {
    let cfg = b"apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: n1\n\
                install:\n  target: /dev/vdb\n  then: poweroff\n"
        .to_vec();
    let env = |root: &Path, live: Option<&str>| RunEnv {
        root: root.to_path_buf(),
        sources: vec![Box::new(Baked {
            root: {
                let b = root.join("baked");
                let f = b.join("usr/share/rke2-image/node-config.yaml");
                fs::create_dir_all(f.parent().unwrap()).unwrap();
                fs::write(f, &cfg).unwrap();
                b
            },
        })],
        identity: Identity::default(),
        preflight_backoff: None,
        network_apply: None,
        pause_before: None,
        relabel: None,
        live_cmdline: live.map(str::to_string),
    };
    let d = tempfile::tempdir().unwrap();
    let live = d.path().join("live");
    fs::create_dir_all(&live).unwrap();
    let out = agent::run(
        &env(&live, Some("rke2.root=iso rke2.install.wipe=1")),
        &mut |_| {},
    )
    .unwrap();
    let RunOutcome::Install(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (r.target.to_string(), r.wipe, r.then),
        (
            "/dev/vdb".to_string(),
            true,
            rke2_firstboot::install::Then::Poweroff
        )
    );
    assert!(!live.join("var/lib/rke2-firstboot").exists());
    assert!(!live.join("etc/hostname").exists());

    // The command line alone (no configuration anywhere) installs too.
    let bare = d.path().join("bare");
    fs::create_dir_all(&bare).unwrap();
    let none = RunEnv {
        sources: Vec::new(),
        ..env(&bare, Some("rke2.root=iso rke2.install=auto"))
    };
    let out = agent::run(&none, &mut |_| {}).unwrap();
    assert!(
        matches!(out, RunOutcome::Install(ref r) if r.target.to_string() == "auto"),
        "{out:?}"
    );
    // A bad request names where it came from.
    let e = agent::run(
        &env(&bare, Some("rke2.root=iso rke2.install=sdb")),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rke2.install: \"sdb\" does not name a disk"),
        "{e}"
    );

    // A disk boot: configured, the install section ignored.
    let disk = d.path().join("disk");
    fs::create_dir_all(&disk).unwrap();
    let out = agent::run(&env(&disk, None), &mut |_| {}).unwrap();
    assert!(matches!(out, RunOutcome::Configured { .. }), "{out:?}");
}
