//! SELinux labels checked against libselinux itself: `matchpathcon -N -m TYPE -f FILE path...`
//! with the same spec files (and their `.homedirs`, `.local`, `.subs_dist`, `.subs` siblings,
//! which libselinux picks up next to `-f`) must give the same context for every path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rke2_image::selinux::{label_tree, FileContexts, XATTR_NAME};
use rke2_image::tree::{Tree, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK};

/// `matchpathcon -m` letter for each file type.
const TYPES: [(u32, &str); 7] = [
    (S_IFREG, "f"),
    (S_IFDIR, "d"),
    (S_IFLNK, "l"),
    (S_IFCHR, "c"),
    (S_IFBLK, "b"),
    (S_IFIFO, "p"),
    (S_IFSOCK, "s"),
];

/// Contexts libselinux gives `paths` (all of file type `letter`), `None` for `<<none>>`.
fn oracle(fc_file: &Path, letter: &str, paths: &[Vec<u8>]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(2000) {
        let res = Command::new("matchpathcon")
            .args(["-N", "-m", letter, "-f"])
            .arg(fc_file)
            .args(chunk.iter().map(|p| OsStr::from_bytes(p)))
            .output()
            .expect("matchpathcon (selinux-utils) must be installed");
        assert!(
            res.status.success(),
            "matchpathcon failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let lines: Vec<&[u8]> = res
            .stdout
            .strip_suffix(b"\n")
            .unwrap_or(&res.stdout)
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(lines.len(), chunk.len(), "one output line per path");
        for (line, path) in lines.iter().zip(chunk) {
            let tab = line
                .iter()
                .rposition(|&b| b == b'\t')
                .expect("path\\tcontext");
            // matchpathcon echoes the path without one trailing slash.
            let echoed = match path.strip_suffix(b"/") {
                Some(p) if !p.is_empty() => p,
                _ => path.as_slice(),
            };
            assert_eq!(&line[..tab], echoed, "output in argument order");
            let ctx = String::from_utf8_lossy(&line[tab + 1..]).into_owned();
            out.push((ctx != "<<none>>").then_some(ctx));
        }
    }
    out
}

/// Compares our lookup with libselinux for each (path, type); returns (compared, mismatches).
fn compare(fc: &FileContexts, fc_file: &Path, probes: &[(Vec<u8>, u32)]) -> (usize, Vec<String>) {
    let mut by_type: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, t) in probes {
        by_type.entry(*t).or_default().push(p.clone());
    }
    let mut compared = 0;
    let mut bad = Vec::new();
    for (t, letter) in TYPES {
        let Some(paths) = by_type.get(&t) else {
            continue;
        };
        let want = oracle(fc_file, letter, paths);
        for (p, w) in paths.iter().zip(want) {
            compared += 1;
            let got = fc.lookup(p, t | 0o644);
            if got != w.as_deref() {
                bad.push(format!(
                    "{} (-m {letter}): ours {got:?}, matchpathcon {w:?}, decided by {:?}",
                    String::from_utf8_lossy(p),
                    fc.explain(p, t)
                ));
            }
        }
    }
    (compared, bad)
}

const MAIN: &str = r"
# comment line
/.*                              system_u:object_r:default_t:s0
/                         -d     system_u:object_r:root_t:s0
/usr/?                           system_u:object_r:usr_stem_t:s0
/usr(/.*)?                       system_u:object_r:usr_t:s0
/usr/lib(/.*)?                   system_u:object_r:lib_t:s0
/usr/lib/[^/]+\.so(\.[^/]*)* --  system_u:object_r:shlib_t:s0
/usr/lib/exact                   system_u:object_r:exact_t:s0
/usr/lib/ex.*                    system_u:object_r:exre_t:s0
/usr/lib/x\+y                    system_u:object_r:plus_t:s0
/usr/lib/x.y                     system_u:object_r:dot_t:s0
/usr/lib/a\.b/c                  system_u:object_r:escstem_t:s0
/etc/a|/b.*                      system_u:object_r:alt_t:s0
/opt/x{2}                        system_u:object_r:rep_t:s0
/opt/y{a}                        system_u:object_r:brace_t:s0
/opt/q{,2}                       system_u:object_r:brace2_t:s0
/opt/[]a-c-]z                    system_u:object_r:class_t:s0
/opt/[[:digit:]]+                system_u:object_r:digit_t:s0
/opt/\d\w\s?e                    system_u:object_r:esc_t:s0
/opt/\x41\x{41}?\0101            system_u:object_r:hex_t:s0
/a\-b/c                          system_u:object_r:escstem2_t:s0
/opt/(?i)case                    system_u:object_r:case_t:s0
/opt/end$                        system_u:object_r:end_t:s0
/dev/null                 -c     system_u:object_r:null_device_t:s0
/dev/.*                   -b     system_u:object_r:fixed_disk_device_t:s0
/dev/pipe                 -p     system_u:object_r:fifo_t:s0
/dev/sock                 -s     system_u:object_r:sock_t:s0
/dev/link                 -l     system_u:object_r:link_t:s0
/tmp(/.*)?                       <<none>>
/tmp/keep                        system_u:object_r:tmp_t:s0
/run(/.*)?                       system_u:object_r:run_t:s0
/srv/data(/.*)?                  system_u:object_r:data_t:s0
(/.*)?/\.cache(/.*)?             system_u:object_r:cache_t:s0
";

#[test]
fn matches_matchpathcon_on_tricky_specs() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("file_contexts");
    let homedirs = "/home/[^/]+/\\.ssh(/.*)?\tunconfined_u:object_r:ssh_home_t:s0\n";
    let local = "/home/bob/local\tsystem_u:object_r:local_t:s0\n/usr/lib/ex.*\t<<none>>\n";
    let subs_dist = "/lib /usr/lib\n/var/run /run\n  # not a rule\n/srv/alias /srv/other\n";
    let subs = "/srv/alias /srv/data\n/alias /\n";
    std::fs::write(&f, MAIN).unwrap();
    std::fs::write(dir.path().join("file_contexts.homedirs"), homedirs).unwrap();
    std::fs::write(dir.path().join("file_contexts.local"), local).unwrap();
    std::fs::write(dir.path().join("file_contexts.subs_dist"), subs_dist).unwrap();
    std::fs::write(dir.path().join("file_contexts.subs"), subs).unwrap();
    let fc = FileContexts::parse(
        MAIN,
        &[
            ("file_contexts.homedirs", homedirs),
            ("file_contexts.local", local),
        ],
        &[subs_dist, subs],
    )
    .unwrap();

    let paths = [
        "/",
        "/usr",
        "/usr/",
        "/usr/lib",
        "/usr//lib/libc.so.6",
        "/usr/lib/libc.so.6",
        "/lib/libc.so.6",
        "/lib",
        "/library",
        "/usr/lib/x+y",
        "/usr/lib/xxy",
        "/usr/lib/x.y",
        "/usr/lib/exact",
        "/usr/lib/exactly",
        "/usr/lib/a.b/c",
        "/etc/abc",
        "/zzz/b/q",
        "/etc",
        "/opt/xx",
        "/opt/xxx",
        "/opt/y{a}",
        "/opt/q{,2}",
        "/opt/qq",
        "/opt/]z",
        "/opt/-z",
        "/opt/bz",
        "/opt/dz",
        "/opt/123",
        "/opt/1a e",
        "/opt/1ae",
        "/opt/AA\x081",
        "/opt/A\x081",
        "/opt/AA",
        "/a-b/c",
        "/opt/CaSe",
        "/opt/end",
        "/dev/null",
        "/dev/sda",
        "/dev/pipe",
        "/dev/sock",
        "/dev/link",
        "/tmp",
        "/tmp/x",
        "/tmp/keep",
        "/var/run/x",
        "/var/run",
        "/srv/alias/q",
        "/srv/other",
        "/alias/usr/lib/libz.so",
        "/home/bob/.ssh/id",
        "/home/bob/local",
        "/home/bob/.cache/x",
        "/nothing/here",
        "/usr/lib/",
        "/usr/lib/exact/",
    ];
    let mut probes = Vec::new();
    for p in paths {
        for (t, _) in TYPES {
            probes.push((p.as_bytes().to_vec(), t));
        }
    }
    let (compared, bad) = compare(&fc, &f, &probes);
    assert_eq!(compared, paths.len() * TYPES.len());
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

const RKE2_PATHS: &[&str] = &[
    "/usr/local/bin/rke2",
    "/usr/bin/rke2",
    "/usr/local/lib/systemd/system/rke2-server.service",
    "/usr/lib/systemd/system/rke2-agent.service",
    "/etc/rancher/rke2/config.yaml",
    "/etc/rancher/rke2/registries.yaml",
    "/var/lib/rancher/rke2/agent/images/rke2-images.linux-amd64.tar.zst",
    "/var/lib/rancher/rke2/data/v1.31.2-rke2r1/bin/containerd",
    "/var/lib/rancher/rke2/server/db/etcd/member",
    "/var/lib/kubelet/pods",
    "/var/log/pods/x/y/0.log",
    "/var/log/containers/x.log",
    "/opt/cni/bin/calico",
    "/etc/cni/net.d/10-canal.conflist",
    "/run/k3s/containerd/containerd.sock",
    "/var/lib/cni/networks",
    "/etc/systemd/system/rke2-server.service.d/override.conf",
    "/usr/share/rke2-image/firstboot",
    "/etc/os-release",
    "/boot/efi/EFI/Linux/rke2.efi",
    "/var/lib/rancher/rke2/../etc",
];

#[test]
fn labels_debian_base_like_matchpathcon() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let mut tree = Tree::new(0);
    rke2_image::archive::load(Path::new(&base), &mut tree).unwrap();

    let t0 = Instant::now();
    let fc = FileContexts::from_tree(&tree)
        .unwrap()
        .expect("the Debian base ships selinux-policy-default");
    let parse_time = t0.elapsed();
    assert_eq!(fc.policy_type(), "default");

    let mut labelled = tree.clone();
    let t1 = Instant::now();
    let stats = label_tree(&mut labelled, &fc);
    let label_time = t1.elapsed();
    println!(
        "policy {}: {} specs parsed in {:?}; labelled {} inodes ({} unlabelled) of {} paths in {:?}",
        fc.policy_type(),
        fc.len(),
        parse_time,
        stats.labelled,
        stats.unlabelled,
        tree.len(),
        label_time
    );

    // The oracle reads the very same files, copied out of the tree.
    let dir = tempfile::tempdir().unwrap();
    let src = format!(
        "etc/selinux/{}/contexts/files/file_contexts",
        fc.policy_type()
    );
    for suffix in ["", ".homedirs", ".local", ".subs_dist", ".subs"] {
        if let Ok(bytes) = tree.read_file(format!("{src}{suffix}").as_bytes()) {
            std::fs::write(dir.path().join(format!("file_contexts{suffix}")), bytes).unwrap();
        }
    }

    let mut probes = Vec::new();
    let mut skipped = 0;
    for (p, id) in tree.iter() {
        let mut key = b"/".to_vec();
        key.extend_from_slice(p);
        // One output line per path: a newline in a name would break the oracle's output.
        if key.contains(&b'\n') {
            skipped += 1;
            continue;
        }
        probes.push((key, tree.inode(id).type_bits()));
    }
    let own_type = probes.len();
    // Every 16th path again with each other file type, to exercise the type restrictions.
    for i in (0..own_type).step_by(16) {
        for (t, _) in TYPES {
            if t != probes[i].1 {
                probes.push((probes[i].0.clone(), t));
            }
        }
    }
    // Paths the image adds on top of the base (RKE2, CNI, kubelet, overlays).
    for p in RKE2_PATHS {
        for (t, _) in TYPES {
            probes.push((p.as_bytes().to_vec(), t));
        }
    }
    let (compared, bad) = compare(&fc, &dir.path().join("file_contexts"), &probes);
    println!(
        "compared {compared} (path, type) pairs with matchpathcon ({own_type} base paths with their \
         own type): {} mismatches ({skipped} names with a newline skipped)",
        bad.len()
    );
    assert!(own_type >= 1000, "only {own_type} paths in the base");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad[..bad.len().min(50)].join("\n")
    );

    // label_tree wrote exactly the lookup result of each inode's first path.
    for (p, id) in labelled.unique_inodes() {
        let mut key = b"/".to_vec();
        key.extend_from_slice(p);
        let want = fc.lookup(&key, labelled.inode(id).st_mode()).map(|c| {
            let mut v = c.as_bytes().to_vec();
            v.push(0);
            v
        });
        assert_eq!(
            labelled.inode(id).xattrs.get(XATTR_NAME),
            want.as_ref(),
            "{key:?}"
        );
    }
    assert_eq!(
        stats.labelled + stats.unlabelled,
        labelled.unique_inodes().len() as u64
    );
}
