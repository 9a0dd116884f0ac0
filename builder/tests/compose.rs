//! Composition: host overlays merged into the tree and the generated identity files, checked
//! against the host filesystem, the shell (os-release is shell syntax), systemd-analyze (for
//! the units in overlays/base) and, with RKE2_TEST_BASE, the real Debian base.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rke2_image::compose::{add_generated, add_overlay, ComposeError, Identity, Overlay};
use rke2_image::tree::{Blob, Inode, Kind, Tree};

const EPOCH: u64 = 1_700_000_000;

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    fs::write(path, data).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small overlay: nested directories, a script, a plain file, host symlinks.
fn sample_overlay(root: &Path) {
    write(&root.join("etc/app/conf.d/10-a.conf"), b"a=1\n", 0o600);
    write(&root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n", 0o700);
    write(&root.join("usr/share/app/data.txt"), b"data", 0o664);
    write(&root.join("usr/share/app/run.sh"), b"#!/bin/sh\n", 0o644);
    symlink("../share/app/data.txt", root.join("usr/bin/data-link")).expect("symlink");
    symlink("/etc/passwd", root.join("etc/app/passwd-link")).expect("symlink");
    symlink("../../../../outside", root.join("etc/app/escape")).expect("symlink");
    // A host symlink to a host directory: must not be followed.
    symlink("/usr/share", root.join("etc/app/host-dir-link")).expect("symlink");
}

fn inode<'a>(t: &'a Tree, p: &str) -> &'a Inode {
    t.get(p.as_bytes())
        .unwrap_or_else(|| panic!("{p} not in the tree"))
}

fn merged_usr_tree() -> Tree {
    let mut t = Tree::new(EPOCH);
    for d in ["usr/lib", "usr/bin", "etc"] {
        t.insert(d.as_bytes(), Inode::dir(0o755, 5))
            .expect("insert");
    }
    t.insert(b"tmp", Inode::dir(0o1777, 5)).expect("insert");
    for (l, target) in [("lib", "usr/lib"), ("bin", "usr/bin")] {
        t.insert(
            l.as_bytes(),
            Inode::new(Kind::Symlink(target.as_bytes().to_vec()), 0o777, 0, 0, 5),
        )
        .expect("insert");
    }
    t
}

#[test]
fn overlay_nested_dirs_modes_owner_and_host_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ov");
    sample_overlay(&src);
    let mut t = Tree::new(EPOCH);
    let mut ov = Overlay::new(&src);
    ov.uid = 1000;
    ov.gid = 2000;
    let stats = add_overlay(&mut t, &ov, EPOCH).unwrap();
    assert_eq!(stats.files, 4);
    assert_eq!(stats.bytes, 4 + 18 + 4 + 10);

    for d in ["etc", "etc/app", "etc/app/conf.d", "usr", "usr/share/app"] {
        let i = inode(&t, d);
        assert!(i.is_dir(), "{d}");
        assert_eq!(
            (i.mode, i.uid, i.gid, i.mtime),
            (0o755, 1000, 2000, EPOCH),
            "{d}"
        );
    }
    // 0600 and 0664 on the host do not leak: 0644; user-executable becomes 0755.
    let conf = inode(&t, "etc/app/conf.d/10-a.conf");
    assert_eq!((conf.mode, conf.uid, conf.gid), (0o644, 1000, 2000));
    assert_eq!(inode(&t, "usr/share/app/data.txt").mode, 0o644);
    assert_eq!(inode(&t, "usr/bin/tool").mode, 0o755);
    assert_eq!(inode(&t, "usr/share/app/run.sh").mode, 0o644);
    // Files reference the host file, not a copy, and read back byte for byte.
    match &inode(&t, "usr/bin/tool").kind {
        Kind::File(Blob::HostFile { path, len }) => {
            assert_eq!(path, &src.join("usr/bin/tool"));
            assert_eq!(*len, 18);
        }
        other => panic!("not a host file: {other:?}"),
    }
    assert_eq!(
        t.read_file(b"usr/bin/tool").unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    // The tree's root keeps its own metadata.
    assert_eq!(t.inode(t.root()).uid, 0);
}

#[test]
fn host_symlinks_stay_symlinks_with_their_exact_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ov");
    sample_overlay(&src);
    let mut t = Tree::new(EPOCH);
    add_overlay(&mut t, &Overlay::new(&src), EPOCH).unwrap();
    for link in [
        "usr/bin/data-link",
        "etc/app/passwd-link",
        "etc/app/escape",
        "etc/app/host-dir-link",
    ] {
        // The oracle is the host's own readlink.
        let want = fs::read_link(src.join(link)).unwrap();
        let i = inode(&t, link);
        assert_eq!(
            i.kind,
            Kind::Symlink(want.as_os_str().as_encoded_bytes().to_vec()),
            "{link}"
        );
        assert_eq!(i.mode, 0o777);
    }
    // Nothing of the host's /usr/share was pulled in through the directory link.
    assert!(!t
        .iter()
        .any(|(p, _)| p.starts_with(b"etc/app/host-dir-link/")));
}

#[test]
fn merged_usr_parents_are_followed_and_links_kept() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ov");
    write(
        &src.join("lib/systemd/system/x.service"),
        b"[Unit]\n",
        0o644,
    );
    write(&src.join("bin/helper"), b"#!/bin/sh\n", 0o755);
    write(&src.join("tmp/keep"), b"", 0o644);
    let mut t = merged_usr_tree();
    add_overlay(&mut t, &Overlay::new(&src), EPOCH).unwrap();
    assert!(t.get(b"usr/lib/systemd/system/x.service").is_some());
    assert!(t.get(b"usr/bin/helper").is_some());
    assert_eq!(inode(&t, "lib").kind, Kind::Symlink(b"usr/lib".to_vec()));
    assert_eq!(inode(&t, "bin").kind, Kind::Symlink(b"usr/bin".to_vec()));
    assert!(t.get(b"lib/systemd").is_none());
    // An existing directory keeps its metadata (here /tmp's sticky 1777).
    let tmp = inode(&t, "tmp");
    assert_eq!((tmp.mode, tmp.mtime), (0o1777, 5));
}

#[test]
fn overlay_target_and_mode_globs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ov");
    write(&src.join("bin/a"), b"a", 0o644);
    write(&src.join("bin/b"), b"b", 0o755);
    write(&src.join("scripts/x/y.sh"), b"y", 0o644);
    write(&src.join("secret"), b"s", 0o644);
    let mut t = merged_usr_tree();
    let mut ov = Overlay::new(&src);
    ov.target = "/opt/thing".into();
    ov.modes = vec![
        ("bin/*".into(), 0o700),
        ("**/*.sh".into(), 0o750),
        ("./secret".into(), 0o600),
        // Later globs win over earlier ones.
        ("bin/b".into(), 0o4755),
        ("scripts/x".into(), 0o700),
    ];
    add_overlay(&mut t, &ov, EPOCH).unwrap();
    assert!(inode(&t, "opt/thing").is_dir());
    assert_eq!(inode(&t, "opt/thing/bin/a").mode, 0o700);
    assert_eq!(inode(&t, "opt/thing/bin/b").mode, 0o4755);
    assert_eq!(inode(&t, "opt/thing/scripts/x/y.sh").mode, 0o750);
    assert_eq!(inode(&t, "opt/thing/scripts/x").mode, 0o700);
    assert_eq!(inode(&t, "opt/thing/scripts").mode, 0o755);
    assert_eq!(inode(&t, "opt/thing/secret").mode, 0o600);

    // A glob that matches nothing is a typo, reported by name.
    let mut bad = Overlay::new(&src);
    bad.modes = vec![("bni/*".into(), 0o700)];
    let err = add_overlay(&mut merged_usr_tree(), &bad, EPOCH).unwrap_err();
    assert!(matches!(err, ComposeError::GlobUnmatched { .. }), "{err}");
    assert!(err.to_string().contains("bni/*"));
    bad.modes = vec![("bin/*".into(), 0o10755)];
    let err = add_overlay(&mut merged_usr_tree(), &bad, EPOCH).unwrap_err();
    assert!(matches!(err, ComposeError::BadMode { .. }), "{err}");
}

#[test]
fn sockets_and_fifos_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ov");
    write(&src.join("etc/ok"), b"x", 0o644);
    let sock = src.join("etc/agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = add_overlay(&mut Tree::new(0), &Overlay::new(&src), EPOCH).unwrap_err();
    assert!(matches!(err, ComposeError::Unsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("agent.sock") && msg.contains("socket"),
        "{msg}"
    );

    let src2 = dir.path().join("ov2");
    fs::create_dir_all(&src2).unwrap();
    let status = Command::new("mkfifo")
        .arg(src2.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = add_overlay(&mut Tree::new(0), &Overlay::new(&src2), EPOCH).unwrap_err();
    assert!(err.to_string().contains("fifo"), "{err}");

    let file = dir.path().join("ov3");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        add_overlay(&mut Tree::new(0), &Overlay::new(&file), EPOCH),
        Err(ComposeError::SourceNotDir(_))
    ));
}

fn digest_of(src: &Path, modes: Vec<(String, u32)>) -> String {
    let mut ov = Overlay::new(src);
    ov.modes = modes;
    add_overlay(&mut Tree::new(0), &ov, EPOCH)
        .expect("overlay")
        .sha256
}

#[test]
fn digest_depends_on_content_not_on_host_details() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b-other-location");
    sample_overlay(&a);
    sample_overlay(&b);
    // Host-only differences: group/other permission bits, mtimes, creation order.
    fs::set_permissions(
        b.join("usr/share/app/data.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let old = fs::File::options()
        .write(true)
        .open(b.join("etc/app/conf.d/10-a.conf"))
        .unwrap();
    old.set_modified(std::time::UNIX_EPOCH).unwrap();
    let d = digest_of(&a, vec![]);
    assert_eq!(d.len(), 64);
    assert_eq!(d, digest_of(&a, vec![]));
    assert_eq!(d, digest_of(&b, vec![]));

    // Each of content, mode, symlink target and name changes it.
    let mut seen = vec![d.clone()];
    fs::write(b.join("usr/share/app/data.txt"), b"datb").unwrap();
    seen.push(digest_of(&b, vec![]));
    seen.push(digest_of(
        &b,
        vec![("usr/share/app/data.txt".into(), 0o600)],
    ));
    fs::remove_file(b.join("usr/bin/data-link")).unwrap();
    symlink("../share/app/other", b.join("usr/bin/data-link")).unwrap();
    seen.push(digest_of(&b, vec![]));
    fs::rename(b.join("usr/bin/tool"), b.join("usr/bin/tool2")).unwrap();
    seen.push(digest_of(&b, vec![]));
    fs::set_permissions(b.join("usr/bin/tool2"), fs::Permissions::from_mode(0o644)).unwrap();
    seen.push(digest_of(&b, vec![]));
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seen.len(), "{seen:#?}");
}

fn synthetic_debian_like() -> Tree {
    let mut t = merged_usr_tree();
    let f = |data: &[u8], mode| Inode::new(Kind::File(Blob::bytes(data.to_vec())), mode, 0, 0, 5);
    let mut osr = f(
        b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\nIMAGE_ID=stale\n",
        0o644,
    );
    osr.xattrs.insert(b"user.keep".to_vec(), b"yes".to_vec());
    t.insert(b"usr/lib/os-release", osr).expect("insert");
    t.insert(
        b"etc/os-release",
        Inode::new(
            Kind::Symlink(b"../usr/lib/os-release".to_vec()),
            0o777,
            0,
            0,
            5,
        ),
    )
    .expect("insert");
    t.insert(
        b"etc/machine-id",
        f(b"0123456789abcdef0123456789abcdef\n", 0o444),
    )
    .expect("insert");
    t.insert(b"etc/fstab", f(b"/dev/sda1 / ext4 rw 0 1\n", 0o644))
        .expect("insert");
    for k in [
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
        "ssh_host_ed25519_key",
    ] {
        t.insert(format!("etc/ssh/{k}").as_bytes(), f(b"KEY", 0o600))
            .expect("insert");
    }
    t.insert(b"etc/ssh/sshd_config", f(b"# keep me\n", 0o644))
        .expect("insert");
    t.insert(b"etc/rancher/node/password", f(b"pw", 0o600))
        .expect("insert");
    t.insert(b"etc/rancher/rke2/config.yaml", f(b"a: b\n", 0o600))
        .expect("insert");
    t.insert(b"var/lib/rancher/rke2/server/token", f(b"K10..", 0o600))
        .expect("insert");
    t.insert(
        b"var/lib/rancher/rke2/server/node-token",
        Inode::new(Kind::Symlink(b"token".to_vec()), 0o777, 0, 0, 5),
    )
    .expect("insert");
    t.insert(
        b"var/lib/rancher/rke2/server/tls/server-ca.key",
        f(b"k", 0o600),
    )
    .expect("insert");
    t.insert(
        b"var/lib/rancher/rke2/server/manifests/x.yaml",
        f(b"m", 0o644),
    )
    .expect("insert");
    t.insert(
        b"var/lib/dbus/machine-id",
        f(b"0123456789abcdef0123456789abcdef\n", 0o444),
    )
    .expect("insert");
    t
}

/// Parses os-release the way the spec defines it: as shell assignments.
fn shell_os_release(text: &[u8], keys: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("os-release");
    fs::write(&p, text).expect("write");
    let script = keys
        .iter()
        .map(|k| format!("printf '%s\\n' \"${k}\""))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". \"$1\"; {script}"))
        .arg("sh")
        .arg(&p)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn generated_files_on_a_synthetic_tree() {
    let mut t = synthetic_debian_like();
    let id = Identity {
        name: "rke2-server".into(),
        version: "1.31.4-1".into(),
        pretty_name: Some("RKE2 \"server\" $node".into()),
    };
    let notes = add_generated(&mut t, &id, EPOCH).unwrap();

    // os-release: the link stays, the real file is edited, fields kept, metadata kept.
    assert_eq!(
        inode(&t, "etc/os-release").kind,
        Kind::Symlink(b"../usr/lib/os-release".to_vec())
    );
    let osr = t.read_file(b"etc/os-release").unwrap();
    assert_eq!(
        shell_os_release(
            &osr,
            &["ID", "NAME", "IMAGE_ID", "IMAGE_VERSION", "PRETTY_NAME"]
        ),
        vec![
            "debian",
            "Debian GNU/Linux",
            "rke2-server",
            "1.31.4-1",
            "RKE2 \"server\" $node"
        ]
    );
    let text = String::from_utf8(osr).unwrap();
    assert_eq!(text.matches("IMAGE_ID=").count(), 1, "{text}");
    assert_eq!(text.matches("PRETTY_NAME=").count(), 1, "{text}");
    let real = inode(&t, "usr/lib/os-release");
    assert_eq!(
        real.xattrs.get(&b"user.keep"[..]).map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    assert_eq!(real.mtime, EPOCH);

    let info: serde_json::Value = serde_json::from_slice(
        &t.read_file(rke2_image_contract::paths::IMAGE_INFO.as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["name"], "rke2-server");
    assert_eq!(info["version"], "1.31.4-1");
    assert_eq!(info["epoch"], EPOCH);

    assert_eq!(t.read_file(b"etc/machine-id").unwrap(), b"");
    let fstab = String::from_utf8(t.read_file(b"etc/fstab").unwrap()).unwrap();
    assert!(!fstab.is_empty());
    assert!(
        fstab
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')),
        "{fstab}"
    );

    for gone in [
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh/ssh_host_rsa_key.pub",
        "etc/ssh/ssh_host_ed25519_key",
        "etc/rancher/node/password",
        "var/lib/rancher/rke2/server/token",
        "var/lib/rancher/rke2/server/node-token",
        "var/lib/rancher/rke2/server/tls",
        "var/lib/rancher/rke2/server/tls/server-ca.key",
        "var/lib/dbus/machine-id",
    ] {
        assert!(t.get(gone.as_bytes()).is_none(), "{gone} still there");
    }
    for kept in [
        "etc/ssh/sshd_config",
        "etc/rancher/rke2/config.yaml",
        "var/lib/rancher/rke2/server/manifests/x.yaml",
    ] {
        assert!(t.get(kept.as_bytes()).is_some(), "{kept} removed");
    }
    let all = notes.join("\n");
    for n in [
        "/etc/ssh/ssh_host_rsa_key ",
        "/etc/rancher/node/password",
        "/var/lib/rancher/rke2/server/tls",
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
    ] {
        assert!(all.contains(n), "no note about {n}:\n{all}");
    }

    // Same input, same result: generation is deterministic.
    let mut again = synthetic_debian_like();
    let notes2 = add_generated(&mut again, &id, EPOCH).unwrap();
    assert_eq!(notes, notes2);
    let dump = |t: &Tree| -> Vec<(Vec<u8>, Inode)> {
        t.iter()
            .map(|(p, i)| (p.to_vec(), t.inode(i).clone()))
            .collect()
    };
    assert_eq!(dump(&t), dump(&again));
}

#[test]
fn generated_files_on_an_empty_tree_and_bad_identity() {
    let mut t = Tree::new(0);
    let id = Identity {
        name: "edge".into(),
        version: "7".into(),
        pretty_name: None,
    };
    add_generated(&mut t, &id, EPOCH).unwrap();
    assert_eq!(
        inode(&t, "etc/os-release").kind,
        Kind::Symlink(b"../usr/lib/os-release".to_vec())
    );
    let osr = t.read_file(b"etc/os-release").unwrap();
    assert_eq!(
        shell_os_release(&osr, &["IMAGE_ID", "IMAGE_VERSION"]),
        vec!["edge", "7"]
    );

    for (name, version) in [("Edge", "7"), ("edge", "7 beta"), ("", "1"), ("a", "1;rm")] {
        let bad = Identity {
            name: name.into(),
            version: version.into(),
            pretty_name: None,
        };
        let err = add_generated(&mut Tree::new(0), &bad, EPOCH).unwrap_err();
        assert!(matches!(err, ComposeError::BadIdentity { .. }), "{err}");
    }
}

fn repo_overlay() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/base")
}

#[test]
fn base_overlay_units_pass_systemd_analyze() {
    let units = repo_overlay().join("usr/lib/systemd/system");
    let check = |path: &Path| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .output()
            .expect("systemd-analyze is installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", path.display());
        assert!(!stderr.contains("Unknown"), "{}: {stderr}", path.display());
    };
    // Drop-ins cannot be verified alone: put each into a throwaway service and verify that.
    let dir = tempfile::tempdir().unwrap();
    for unit in ["apt-daily", "apt-daily-upgrade"] {
        let dropin = units.join(format!("{unit}.service.d/50-rke2-image-read-only-usr.conf"));
        let mut text = fs::read_to_string(&dropin).unwrap();
        assert!(text.contains("ConditionPathIsReadWrite=/usr"));
        text.push_str("[Service]\nType=oneshot\nExecStart=/bin/true\n");
        let p = dir.path().join(format!("{unit}-check.service"));
        fs::write(&p, text).unwrap();
        check(&p);
    }
    // /tmp is rke2-init's tmpfs; a tmp.mount here would stack a second one on it.
    assert!(!units.join("tmp.mount").exists());
}

#[test]
fn debian_base_composes_with_base_overlay_and_identity() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let mut t = Tree::new(EPOCH);
    rke2_image::archive::load(Path::new(&base), &mut t).unwrap();
    let before = t.read_file(b"etc/os-release").unwrap();

    let stats = add_overlay(&mut t, &Overlay::new(repo_overlay()), EPOCH).unwrap();
    assert!(stats.files >= 2);
    // Merged /usr: the drop-ins landed in usr/lib and lib is still the base's link.
    assert!(t
        .get(b"usr/lib/systemd/system/apt-daily.service.d/50-rke2-image-read-only-usr.conf")
        .is_some());
    assert!(matches!(inode(&t, "lib").kind, Kind::Symlink(_)));

    let id = Identity {
        name: "rke2-node".into(),
        version: "0.1.0".into(),
        pretty_name: None,
    };
    let notes = add_generated(&mut t, &id, EPOCH).unwrap();
    println!("notes: {notes:#?}");
    assert!(matches!(inode(&t, "etc/os-release").kind, Kind::Symlink(_)));
    let after = t.read_file(b"etc/os-release").unwrap();
    let keys = [
        "ID",
        "VERSION_CODENAME",
        "PRETTY_NAME",
        "IMAGE_ID",
        "IMAGE_VERSION",
    ];
    let old = shell_os_release(&before, &keys);
    let new = shell_os_release(&after, &keys);
    assert_eq!(new[0], "debian");
    assert_eq!(new[..3], old[..3], "base fields changed");
    assert_eq!(new[3..], ["rke2-node", "0.1.0"]);
    assert_eq!(t.read_file(b"etc/machine-id").unwrap(), b"");
    assert!(t.iter().all(|(p, _)| !p.starts_with(b"etc/ssh/ssh_host_")));
}
