//! The RKE2 payload against a generated release fixture (stand-in rke2, a test double), checked
//! with tools nobody here wrote: sha256sum, zstd, readelf, fsck.erofs (extraction of an image
//! written from the tree), selabel_lookup and sesearch on the rebuilt policy.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fs;
use std::path::Path;
use std::process::Command;

use rke2_image::erofs;
use rke2_image::payload::{self, Options, PayloadError, Rke2Section, Rke2Spec};
use rke2_image::tree::{Blob, Inode, Kind, Tree};
use rke2_testsupport::fixture::{self, FixtureOptions};

const VERSION: &str = "v1.31.5+rke2r1";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn release(o: &FixtureOptions) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let bin = rke2_testsupport::stand_in_binary().unwrap();
    fixture::write_release(d.path(), &bin, o).unwrap();
    d
}

fn spec(dir: &Path, yaml: &str) -> Rke2Spec {
    let text = format!("artifacts: {}\nversion: {VERSION}\n{yaml}", dir.display());
    let s: Rke2Section = serde_saphyr::from_str(&text).unwrap();
    Rke2Spec::from_section(&s, Path::new("/"), Path::new("/defs/node.yaml")).unwrap()
}

fn small_tree() -> Tree {
    let mut t = Tree::new(0);
    let f = |s: &str, mode| {
        Inode::new(
            Kind::File(Blob::bytes(s.as_bytes().to_vec())),
            mode,
            0,
            0,
            0,
        )
    };
    t.insert(
        b"etc/passwd",
        f(
            "root:x:0:0:root:/root:/bin/bash\nsystemd-network:x:998:998::/:/usr/sbin/nologin\n",
            0o644,
        ),
    )
    .unwrap();
    t.insert(
        b"etc/group",
        f("root:x:0:\nsystemd-network:x:998:\n", 0o644),
    )
    .unwrap();
    t.insert(b"etc/shadow", f("root:*:19000:0:99999:7:::\n", 0o640))
        .unwrap();
    t.insert(
        b"usr/lib/sysctl.d/50-default.conf",
        f("kernel.panic = 0\nnet.ipv4.conf.all.rp_filter = 2\n", 0o644),
    )
    .unwrap();
    t
}

fn opts(fips: bool, cis: bool) -> Options {
    Options {
        fips,
        cis,
        selinux: false,
        allow_non_fips_supervisor: false,
        epoch: 1_700_000_000,
    }
}

fn apply(tree: &mut Tree, spec: &Rke2Spec, o: &Options) -> Result<payload::Report, PayloadError> {
    payload::apply(tree, spec, o, &mut |l| eprintln!("{l}"))
}

fn text(tree: &Tree, p: &str) -> String {
    String::from_utf8(tree.read_file(p.as_bytes()).unwrap()).unwrap()
}

/// What systemd would apply: the tree's sysctl files written out and read back with
/// `systemd-analyze --root=... cat-config sysctl.d` (systemd's own ordering and masking).
fn systemd_sysctls(t: &Tree) -> std::collections::BTreeMap<String, String> {
    let root = tempfile::tempdir().unwrap();
    for (p, id) in t.iter() {
        let s = String::from_utf8_lossy(p).into_owned();
        let wanted = [
            "etc/sysctl.d/",
            "usr/lib/sysctl.d/",
            "usr/local/lib/sysctl.d/",
            "run/sysctl.d/",
        ]
        .iter()
        .any(|d| s.starts_with(d))
            || s == "etc/sysctl.conf";
        if wanted && matches!(t.inode(id).kind, Kind::File(_)) {
            let dest = root.path().join(&s);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(&dest, t.read_file(p).unwrap()).unwrap();
        }
    }
    let out = run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.path().display()))
        .args(["cat-config", "sysctl.d"]));
    let mut m = std::collections::BTreeMap::new();
    for l in out.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            m.insert(
                k.trim().trim_start_matches('-').replace('/', "."),
                v.trim().to_string(),
            );
        }
    }
    m
}

fn assert_cis_sysctls(t: &Tree) {
    let m = systemd_sysctls(t);
    for (k, v) in payload::cis::REQUIRED {
        assert_eq!(
            m.get(*k).map(String::as_str),
            Some(*v),
            "{k} per systemd-analyze: {m:?}"
        );
    }
}

#[test]
fn fixture_is_shaped_like_a_release() {
    let d = release(&FixtureOptions::new(VERSION));
    // sha256sum itself agrees with the checksum file.
    run(Command::new("sha256sum")
        .arg("-c")
        .arg("--strict")
        .arg("sha256sum-amd64.txt")
        .current_dir(d.path()));
    let listing = run(Command::new("tar")
        .arg("-tzvf")
        .arg(d.path().join("rke2.linux-amd64.tar.gz")));
    for f in [
        "bin/rke2",
        "bin/rke2-killall.sh",
        "bin/rke2-uninstall.sh",
        "lib/systemd/system/rke2-server.service",
        "lib/systemd/system/rke2-agent.env",
        "share/rke2/rke2-cis-sysctl.conf",
        "share/rke2/LICENSE.txt",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!(" {f}")) && l.contains("0/0")),
            "{f} missing:\n{listing}"
        );
    }
    // zstd reports the window the importer checks.
    let z = run(Command::new("zstd")
        .arg("-lv")
        .arg(d.path().join("rke2-images-core.linux-amd64.tar.zst")));
    assert!(z.contains("(33554432 B)"), "{z}");
    // docker save layout: manifest.json first.
    let t = run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc {} | tar -t",
        d.path()
            .join("rke2-images-canal.linux-amd64.tar.zst")
            .display()
    )));
    assert_eq!(t.lines().next(), Some("manifest.json"));
    // readelf sees the build info the FIPS gate reads.
    let bin = d.path().join("rke2-bin");
    run(Command::new("sh").arg("-c").arg(format!(
        "tar -xzOf {} bin/rke2 > {}",
        d.path().join("rke2.linux-amd64.tar.gz").display(),
        bin.display()
    )));
    let dump = run(Command::new("readelf")
        .arg("--string-dump=.go.buildinfo")
        .arg(&bin));
    assert!(
        dump.contains("GOEXPERIMENT=boringcrypto") && dump.contains(VERSION),
        "{dump}"
    );
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let v = run(Command::new(&bin).arg("--version"));
    assert!(
        v.starts_with(&format!("rke2 version {VERSION} "))
            && v.contains("go version go1.23.6 X:boringcrypto"),
        "{v}"
    );
}

#[test]
fn installs_verified_payload_and_reads_back_from_erofs() {
    let d = release(&FixtureOptions::new(VERSION));
    let s = spec(d.path(), "cni: canal\nconfig:\n  write-kubeconfig-mode: \"0640\"\n  tls-san: [a.example, b.example]\n");
    let mut t = small_tree();
    let r = apply(&mut t, &s, &opts(true, true)).unwrap();
    assert_eq!(r.version, VERSION);
    let names: Vec<(&str, &str)> = r
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.result.as_str()))
        .collect();
    for c in [
        "rke2-artifacts",
        "fips-supervisor",
        "rke2-units-not-enabled",
        "cis-profile",
        "airgap-images",
    ] {
        assert!(names.contains(&(c, "passed")), "{c} not passed: {names:?}");
    }
    let lists = fixture::image_lists(VERSION);
    let want: Vec<String> = lists["core"]
        .iter()
        .chain(&lists["canal"])
        .cloned()
        .collect();
    for i in &want {
        assert!(r.images.contains(i), "{i} not reported in {:?}", r.images);
    }
    // Inputs: bundle, both tarballs, both lists, with the hashes sha256sum-amd64.txt lists.
    let sums = fs::read_to_string(d.path().join("sha256sum-amd64.txt")).unwrap();
    assert_eq!(r.inputs.len(), 5);
    for i in &r.inputs {
        assert!(
            sums.contains(&format!("{}  {}\n", i.sha256, i.name)),
            "{i:?}"
        );
    }
    // Air-gap tarballs are host files, never read into memory.
    let core = t
        .get(b"usr/share/rke2-image/images/rke2-images-core.linux-amd64.tar.zst")
        .unwrap();
    assert!(matches!(&core.kind, Kind::File(Blob::HostFile { .. })));
    let unit = text(&t, "usr/lib/systemd/system/rke2-server.service");
    assert!(
        unit.contains("\nExecStart=/usr/bin/rke2 server\n") && !unit.contains("/usr/local"),
        "{unit}"
    );
    assert!(t.get(b"usr/bin/rke2-uninstall.sh").is_none());
    let cfg = text(&t, "etc/rancher/rke2/config.yaml.d/10-rke2-image.yaml");
    let cfg_doc: serde_json::Value = serde_saphyr::from_str(&cfg).unwrap();
    assert_eq!(cfg_doc["profile"], "cis");
    assert_eq!(cfg_doc["cni"], "canal");
    assert_eq!(cfg_doc["tls-san"][1], "b.example");

    assert_cis_sysctls(&t);
    // Write the tree as EROFS and read it back with fsck.erofs.
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("root.erofs");
    let eo = erofs::Options {
        uuid: [7; 16],
        volume_name: "rke2-root".into(),
        build_time: 1_700_000_000,
    };
    let plan = erofs::plan(&t, &eo).unwrap();
    let f = fs::File::create(&img).unwrap();
    erofs::write(&t, &plan, &f, 0, plan.size()).unwrap();
    let x = img_dir.path().join("x");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", x.display()))
        .arg(&img));
    let v = run(Command::new(x.join("usr/bin/rke2")).arg("--version"));
    assert!(v.starts_with(&format!("rke2 version {VERSION} ")), "{v}");
    let unit_x = fs::read_to_string(x.join("usr/lib/systemd/system/rke2-agent.service")).unwrap();
    assert!(
        unit_x.contains("\nExecStart=/usr/bin/rke2 agent\n")
            && unit_x.contains("EnvironmentFile=-/usr/lib/systemd/system/%N.env")
    );
    assert_eq!(
        fs::read_to_string(x.join("usr/lib/systemd/system/rke2-agent.env")).unwrap(),
        "HOME=/root\n"
    );
    assert_eq!(
        fs::read_to_string(x.join("etc/sysctl.d/60-rke2-cis.conf")).unwrap(),
        fixture::CIS_SYSCTL
    );
    let ml = fs::read_to_string(x.join("etc/modules-load.d/rke2.conf")).unwrap();
    assert!(ml.lines().any(|l| l == "br_netfilter") && ml.lines().any(|l| l == "overlay"));
    let passwd = fs::read_to_string(x.join("etc/passwd")).unwrap();
    let group = fs::read_to_string(x.join("etc/group")).unwrap();
    assert!(
        passwd.contains("\netcd:x:999:999:etcd user:/nonexistent:/sbin/nologin\n"),
        "{passwd}"
    );
    assert!(group.contains("\netcd:x:999:\n"), "{group}");
    // pwck/grpck (shadow's own checkers) accept the result.
    run(Command::new("grpck").arg("-r").arg("-R").arg(&x));
    // The preloaded tarballs are byte-identical to the release (sha256sum -c against its file).
    let imgs = x.join("usr/share/rke2-image/images");
    let mut lines = String::new();
    for l in sums.lines() {
        if imgs.join(l.split("  ").nth(1).unwrap()).exists() {
            lines.push_str(l);
            lines.push('\n');
        }
    }
    assert_eq!(lines.lines().count(), 2, "{lines}");
    fs::write(img_dir.path().join("sums"), lines).unwrap();
    run(Command::new("sha256sum")
        .arg("-c")
        .arg(img_dir.path().join("sums"))
        .current_dir(&imgs));
    // No unit enabled.
    let wants = run(Command::new("find")
        .arg(&x)
        .arg("-path")
        .arg("*.wants/rke2*"));
    assert!(wants.trim().is_empty(), "{wants}");
}

#[test]
fn cis_check_sees_a_base_file_overriding_the_profile() {
    let d = release(&FixtureOptions::new(VERSION));
    let s = spec(d.path(), "");
    let mut t = small_tree();
    // A later file name wins in systemd-sysctl order.
    t.insert(
        b"etc/sysctl.d/99-local.conf",
        Inode::new(
            Kind::File(Blob::bytes(b"vm.overcommit_memory = 0\n".to_vec())),
            0o644,
            0,
            0,
            0,
        ),
    )
    .unwrap();
    let e = apply(&mut t, &s, &opts(false, true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vm.overcommit_memory would be 0") && e.contains("/etc/sysctl.d/99-local.conf"),
        "{e}"
    );
    // systemd agrees: the CIS file was installed, and the later file wins.
    assert!(t.get(b"etc/sysctl.d/60-rke2-cis.conf").is_some());
    assert_eq!(systemd_sysctls(&t)["vm.overcommit_memory"], "0");
}

#[test]
fn doctored_checksum_fails_with_both_hashes() {
    let d = release(&FixtureOptions::new(VERSION));
    let p = d.path().join("rke2-images-canal.linux-amd64.tar.zst");
    let mut data = fs::read(&p).unwrap();
    let n = data.len();
    data[n - 5] ^= 0xff;
    fs::write(&p, &data).unwrap();
    let expected = fs::read_to_string(d.path().join("sha256sum-amd64.txt"))
        .unwrap()
        .lines()
        .find(|l| l.ends_with("  rke2-images-canal.linux-amd64.tar.zst"))
        .unwrap()[..64]
        .to_string();
    let actual = run(Command::new("sha256sum").arg(&p))[..64].to_string();
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap_err();
    assert!(matches!(e, PayloadError::Mismatch { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("rke2-images-canal.linux-amd64.tar.zst")
            && m.contains(&expected)
            && m.contains(&actual),
        "{m}"
    );
}

#[test]
fn doctored_bundle_checksum_fails() {
    let d = release(&FixtureOptions::new(VERSION));
    let p = d.path().join("rke2.linux-amd64.tar.gz");
    let mut data = fs::read(&p).unwrap();
    data[100] ^= 1;
    fs::write(&p, &data).unwrap();
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap_err();
    assert!(
        matches!(e, PayloadError::Mismatch { ref path, .. } if path.ends_with("rke2.linux-amd64.tar.gz")),
        "{e}"
    );
}

#[test]
fn missing_tarball_fails_naming_it() {
    let d = release(&FixtureOptions::new(VERSION));
    fs::remove_file(d.path().join("rke2-images-cilium.linux-amd64.tar.zst")).unwrap();
    let e = apply(
        &mut small_tree(),
        &spec(d.path(), "cni: cilium\n"),
        &opts(false, false),
    )
    .unwrap_err();
    assert!(matches!(e, PayloadError::Missing { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("rke2-images-cilium.linux-amd64.tar.zst"),
        "{e}"
    );
}

#[test]
fn image_missing_from_tarball_fails_naming_it() {
    let mut o = FixtureOptions::new(VERSION);
    let gone = fixture::image_lists(VERSION)["canal"][1].clone();
    o.drop_images = vec![gone.clone()];
    let d = release(&o);
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap_err();
    assert!(
        matches!(e, PayloadError::ImageMissing { ref image, .. } if *image == gone),
        "{e}"
    );
    assert!(
        e.to_string().contains("rke2-images-canal.linux-amd64.txt"),
        "{e}"
    );
    // The legacy tarball carries the same images: also incomplete.
    let e = apply(
        &mut small_tree(),
        &spec(d.path(), "images: [legacy]\n"),
        &opts(false, false),
    )
    .unwrap_err();
    assert!(
        matches!(e, PayloadError::ImageMissing { ref image, .. } if *image == gone),
        "{e}"
    );
    // Choosing a CNI whose tarball is not preloaded is incomplete too.
    let d = release(&FixtureOptions::new(VERSION));
    let e = apply(
        &mut small_tree(),
        &spec(d.path(), "cni: calico\nimages: [core]\n"),
        &opts(false, false),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("rke2-images-calico.linux-amd64.txt"),
        "{e}"
    );
    apply(
        &mut small_tree(),
        &spec(d.path(), "images: [legacy]\n"),
        &opts(false, false),
    )
    .unwrap();
}

#[test]
fn zstd_window_too_large_fails() {
    let mut o = FixtureOptions::new(VERSION);
    o.zstd_window_log = 27;
    let d = release(&o);
    let z = run(Command::new("zstd")
        .arg("-lv")
        .arg(d.path().join("rke2-images-core.linux-amd64.tar.zst")));
    assert!(z.contains("(134217728 B)"), "{z}");
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap_err();
    assert!(
        matches!(e, PayloadError::ZstdWindow { window, .. } if window == 1 << 27),
        "{e}"
    );
    // gzip tarballs have no window: the same release works with .tar.gz parts.
    fs::remove_file(d.path().join("rke2-images-core.linux-amd64.tar.zst")).unwrap();
    fs::remove_file(d.path().join("rke2-images-canal.linux-amd64.tar.zst")).unwrap();
    let sums = fs::read_to_string(d.path().join("sha256sum-amd64.txt")).unwrap();
    let kept: String = sums
        .lines()
        .filter(|l| {
            !l.ends_with("core.linux-amd64.tar.zst") && !l.ends_with("canal.linux-amd64.tar.zst")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(d.path().join("sha256sum-amd64.txt"), kept).unwrap();
    let r = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap();
    assert!(r
        .inputs
        .iter()
        .any(|i| i.name == "rke2-images-core.linux-amd64.tar.gz"));
}

#[test]
fn fips_gate_refuses_non_boringcrypto_supervisor() {
    let mut o = FixtureOptions::new(VERSION);
    o.boringcrypto = false;
    let d = release(&o);
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(true, false)).unwrap_err();
    assert!(matches!(e, PayloadError::NotFips { .. }), "{e}");
    assert!(e.to_string().contains("--allow-non-fips-supervisor"), "{e}");
    let mut allow = opts(true, false);
    allow.allow_non_fips_supervisor = true;
    let r = apply(&mut small_tree(), &spec(d.path(), ""), &allow).unwrap();
    let c = r
        .checks
        .iter()
        .find(|c| c.name == "fips-supervisor")
        .unwrap();
    assert_eq!(c.result, "warned");
    // FIPS off: the check is recorded as skipped.
    let r = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false)).unwrap();
    assert_eq!(
        r.checks
            .iter()
            .find(|c| c.name == "fips-supervisor")
            .unwrap()
            .result,
        "skipped"
    );
}

#[test]
fn version_must_match_the_bundle() {
    let d = release(&FixtureOptions::new("v1.30.9+rke2r1"));
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1.30.9+rke2r1") && e.contains(VERSION), "{e}");
}

#[test]
fn registries_manifests_proxy_are_baked() {
    let d = release(&FixtureOptions::new(VERSION));
    let extra = tempfile::tempdir().unwrap();
    fs::write(
        extra.path().join("registries.yaml"),
        "mirrors:\n  docker.io:\n    endpoint: [\"https://mirror.example:5000\"]\n",
    )
    .unwrap();
    fs::write(
        extra.path().join("hcc.yaml"),
        "apiVersion: helm.cattle.io/v1\nkind: HelmChartConfig\nmetadata:\n  name: rke2-canal\n",
    )
    .unwrap();
    let text = format!(
        "artifacts: {}\nversion: {VERSION}\nregistries: registries.yaml\nmanifests: [hcc.yaml]\nproxy:\n  httpProxy: http://proxy:3128\n  noProxy: 10.0.0.0/8\n",
        d.path().display()
    );
    let sec: Rke2Section = serde_saphyr::from_str(&text).unwrap();
    let s = Rke2Spec::from_section(&sec, extra.path(), &extra.path().join("node.yaml")).unwrap();
    let mut t = small_tree();
    apply(&mut t, &s, &opts(false, false)).unwrap();
    assert!(text_of(&t, "etc/rancher/rke2/registries.yaml").contains("mirror.example"));
    assert_eq!(
        t.get(b"etc/rancher/rke2/registries.yaml").unwrap().mode,
        0o600
    );
    assert!(text_of(&t, "usr/share/rke2-image/manifests/hcc.yaml").contains("HelmChartConfig"));
    assert_eq!(
        text_of(&t, "etc/default/rke2-agent"),
        "HTTP_PROXY=\"http://proxy:3128\"\nNO_PROXY=\"10.0.0.0/8\"\n"
    );
    // Unknown keys are refused with the key named.
    let bad: Result<Rke2Section, _> =
        serde_saphyr::from_str("artifacts: x\nversion: v1\nimagez: []\n");
    assert!(bad.unwrap_err().to_string().contains("imagez"));
}

fn text_of(t: &Tree, p: &str) -> String {
    text(t, p)
}

/// With the Debian base: the CIL module compiled into the image's policy, the label stage's
/// file_contexts and libselinux's own lookup agree on the rke2 paths.
#[test]
fn selinux_module_on_debian_base() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let d = release(&FixtureOptions::new(VERSION));
    let mut t = Tree::new(0);
    rke2_image::archive::load(&base, &mut t).unwrap();
    let mut o = opts(true, true);
    o.selinux = true;
    let r = apply(&mut t, &spec(d.path(), ""), &o).unwrap();
    assert!(
        r.checks
            .iter()
            .any(|c| c.name == "selinux-rke2-policy" && c.result == "passed"),
        "{:?}",
        r.checks
    );
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "cis-profile" && c.result == "passed"));
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "rke2-kernel-modules" && c.result == "passed"));
    // modprobe agrees that the modules modules-load.d names resolve in the image's kernel.
    let kdir = tempfile::tempdir().unwrap();
    let mut kernel = String::new();
    for (p, id) in t.iter() {
        let s = String::from_utf8_lossy(p).into_owned();
        let Some(rest) = s.strip_prefix("usr/lib/modules/") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() == 2
            && parts[1].starts_with("modules.")
            && matches!(t.inode(id).kind, Kind::File(_))
        {
            kernel = parts[0].to_string();
            let dest = kdir.path().join("lib/modules").join(rest);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(&dest, t.read_file(p).unwrap()).unwrap();
        }
    }
    let conf = String::from_utf8(t.read_file(b"etc/modules-load.d/rke2.conf").unwrap()).unwrap();
    for m in conf
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let out = run(Command::new("modprobe").arg("-d").arg(kdir.path()).args([
            "-S",
            &kernel,
            "--show-depends",
            m,
        ]));
        assert!(out.contains(&format!("/{m}.ko")), "{m}: {out}");
    }
    assert_cis_sysctls(&t);
    let fc = rke2_image::selinux::FileContexts::from_tree(&t)
        .unwrap()
        .unwrap();
    rke2_image::selinux::label_tree(&mut t, &fc);
    let label = |p: &str| {
        String::from_utf8(t.get(p.as_bytes()).unwrap().xattrs[&b"security.selinux"[..]].clone())
            .unwrap()
    };
    assert!(label("usr/bin/rke2").starts_with("system_u:object_r:rke2_exec_t:s0"));
    assert!(label("usr/lib/systemd/system/rke2-server.service")
        .starts_with("system_u:object_r:rke2_unit_t:s0"));
    assert!(label("etc/rancher/rke2/config.yaml.d/10-rke2-image.yaml")
        .starts_with("system_u:object_r:etc_t:s0"));
    // libselinux's own lookup on the file_contexts the module produced.
    let x = tempfile::tempdir().unwrap();
    let fcp = x.path().join("file_contexts");
    fs::write(
        &fcp,
        t.read_file(b"etc/selinux/default/contexts/files/file_contexts")
            .unwrap(),
    )
    .unwrap();
    for (path, ty) in [
        ("/usr/bin/rke2", "rke2_exec_t"),
        ("/var/lib/rancher/rke2/server/db", "rke2_var_lib_t"),
        (
            "/var/lib/rancher/rke2/data/v1/bin/containerd",
            "rke2_exec_t",
        ),
        ("/opt/cni/bin/calico", "bin_t"),
        ("/etc/cni/net.d/10-canal.conflist", "etc_t"),
    ] {
        let out = run(Command::new("selabel_lookup")
            .args(["-b", "file", "-k", path, "-f"])
            .arg(&fcp));
        assert!(out.contains(&format!(":{ty}:")), "{path}: {out}");
    }
    // The binary policy has the domain transition systemd -> rke2_t.
    let pol = x.path().join("policy.33");
    fs::write(
        &pol,
        t.read_file(b"etc/selinux/default/policy/policy.33")
            .unwrap(),
    )
    .unwrap();
    let tt = run(Command::new("sesearch")
        .arg("-T")
        .args(["-s", "init_t", "-t", "rke2_exec_t", "-c", "process"])
        .arg(&pol));
    assert!(
        tt.contains("type_transition init_t rke2_exec_t:process rke2_t"),
        "{tt}"
    );
    // The module is in the image's own store, so semodule on a node lists it.
    assert!(t
        .lookup(b"var/lib/selinux/default/active/modules/400/rke2_image/cil")
        .is_some());
    // Reproducible: a second build from the same inputs gives the same policy files and modes.
    let files = |t: &Tree| -> Vec<(Vec<u8>, u32, Vec<u8>)> {
        t.iter()
            .filter(|(p, _)| p.starts_with(b"etc/selinux/") || p.starts_with(b"var/lib/selinux/"))
            .map(|(p, id)| {
                let data = match &t.inode(id).kind {
                    Kind::File(_) => t.read_file(p).unwrap(),
                    _ => Vec::new(),
                };
                (p.to_vec(), t.inode(id).mode, data)
            })
            .collect()
    };
    let mut t2 = Tree::new(0);
    rke2_image::archive::load(&base, &mut t2).unwrap();
    apply(&mut t2, &spec(d.path(), ""), &o).unwrap();
    let (f1, f2) = (files(&t), files(&t2));
    assert_eq!(f1.len(), f2.len());
    for (a, b) in f1.iter().zip(&f2) {
        assert!(
            a == b,
            "/{} differs between two builds",
            String::from_utf8_lossy(&a.0)
        );
    }
}

#[test]
fn kernel_without_br_netfilter_fails() {
    let d = release(&FixtureOptions::new(VERSION));
    let mut t = small_tree();
    let dep = |s: &str| {
        Inode::new(
            Kind::File(Blob::bytes(s.as_bytes().to_vec())),
            0o644,
            0,
            0,
            0,
        )
    };
    t.insert(
        b"usr/lib/modules/6.1.0-test/modules.dep",
        dep("kernel/fs/overlayfs/overlay.ko.xz:\n"),
    )
    .unwrap();
    let e = apply(&mut t, &spec(d.path(), ""), &opts(false, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("6.1.0-test") && e.contains("br_netfilter"),
        "{e}"
    );
    // Built in counts too.
    t.insert(
        b"usr/lib/modules/6.1.0-test/modules.builtin",
        dep("kernel/net/bridge/br_netfilter.ko\n"),
    )
    .unwrap();
    let r = apply(&mut t, &spec(d.path(), ""), &opts(false, false)).unwrap();
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "rke2-kernel-modules" && c.result == "passed"));
}

/// A later zstd frame with a window above 2^25 is refused too (the first header alone is not
/// trusted).
#[test]
fn zstd_later_frame_window_too_large_fails() {
    let d = release(&FixtureOptions::new(VERSION));
    let name = "rke2-images-core.linux-amd64.tar.zst";
    let tar = fixture::docker_save(&fixture::image_lists(VERSION)["core"]).unwrap();
    let frame = |data: &[u8], log: u32| {
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        e.long_distance_matching(true).unwrap();
        e.window_log(log).unwrap();
        e.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    };
    let (a, b) = tar.split_at(tar.len() / 2);
    let mut z = frame(a, 20);
    z.extend(frame(b, 27));
    fs::write(d.path().join(name), &z).unwrap();
    // zstd itself sees two frames and decodes them to the original tar.
    let l = run(Command::new("zstd").arg("-lv").arg(d.path().join(name)));
    assert!(l.contains("# Zstandard Frames: 2"), "{l}");
    let sums = fs::read_to_string(d.path().join("sha256sum-amd64.txt")).unwrap();
    let sha = run(Command::new("sha256sum").arg(d.path().join(name)))[..64].to_string();
    let sums: String = sums
        .lines()
        .map(|l| {
            if l.ends_with(name) {
                format!("{sha}  {name}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(d.path().join("sha256sum-amd64.txt"), sums).unwrap();
    let e = apply(&mut small_tree(), &spec(d.path(), ""), &opts(false, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains(name) && e.contains("2^25"), "{e}");
}
