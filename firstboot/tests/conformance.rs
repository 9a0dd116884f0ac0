//! Conformance with the upstream projects' own cases.
//!
//! Ignition: configs derived from coreos/ignition@a5d574a8d2ad (tests/positive, tests/negative,
//! config/v3_*/types tests); each case names its upstream file and test. Positive cases run for
//! every spec version from the case's `ConfigMinVersion` (to its `ConfigMaxVersion`) and must
//! render to the expected entries; remote `http://` sources of the originals are inlined as
//! `data:` URLs (this agent fetches nothing).
//!
//! cloud-init: fixtures under `tests/fixtures/conformance/cloud-init/`, derived from
//! canonical/cloud-init@04eacd06ee60 (doc/examples and module documentation); each names its
//! origin in a comment.
//!
//! Every negative case must be refused by `render` and by `validate --root` (and by plain
//! `validate` when no root is needed), with the root byte-for-byte unchanged.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rke2_firstboot::agent;
use rke2_firstboot::atomic::Root;
use rke2_firstboot::dialects::ignition::VERSIONS;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::sources::Found;

/// Something present in the root before the run.
enum Pre {
    File(&'static str, &'static str, u32, u32, u32),
    Dir(&'static str),
    Link(&'static str, &'static str),
}

/// What the run must leave: `entry` is `kind mode uid:gid` as `common::dump` writes it.
enum Exp {
    Entry(&'static str, &'static str, Option<&'static str>),
    Link(&'static str, &'static str),
    Contains(&'static str, &'static str),
    Lacks(&'static str, &'static str),
    Absent(&'static str),
}

/// The root every case starts from: a Debian-like /etc with `core` (uid 500, as Ignition's
/// test disk), `sys` and the `users` group (as Debian has them).
fn seeded(pre: &[Pre]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    common::seed(r);
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nsys:x:3:3:sys:/dev:/usr/sbin/nologin\ncore:x:500:500:core:/home/core:/bin/bash\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/group"),
        "root:x:0:\nsys:x:3:\nsudo:x:27:\nusers:x:100:\ncore:x:500:\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/shadow"),
        "root:*:19700:0:99999:7:::\nsys:*:19700:0:99999:7:::\ncore:*:19700:0:99999:7:::\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/gshadow"),
        "root:*::\nsys:*::\nsudo:*::\nusers:*::\ncore:!::\n",
    )
    .unwrap();
    fs::write(r.join("etc/motd"), "welcome\n").unwrap();
    for p in pre {
        match p {
            Pre::File(path, body, mode, uid, gid) => {
                let h = r.join(path.trim_start_matches('/'));
                fs::create_dir_all(h.parent().unwrap()).unwrap();
                fs::write(&h, body).unwrap();
                std::os::unix::fs::chown(&h, Some(*uid), Some(*gid)).unwrap();
                fs::set_permissions(&h, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .unwrap();
            }
            Pre::Dir(path) => {
                let h = r.join(path.trim_start_matches('/'));
                fs::create_dir_all(&h).unwrap();
                fs::write(h.join("keep"), "x").unwrap();
            }
            Pre::Link(path, target) => {
                let h = r.join(path.trim_start_matches('/'));
                fs::create_dir_all(h.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, h).unwrap();
            }
        }
    }
    t
}

fn render(root: &Path, bytes: &[u8]) -> Result<Vec<String>, String> {
    let found = Found {
        origin: "case".into(),
        bytes: bytes.to_vec(),
        meta_hostname: None,
    };
    let loaded = agent::load(&found, &Identity::default()).map_err(|e| e.to_string())?;
    agent::render_to(&Root::new(root), &loaded, &mut |_| Ok(())).map_err(|e| e.to_string())?;
    Ok(loaded.plan.warnings)
}

fn check(case: &str, root: &Path, exp: &[Exp]) {
    let dump = common::dump(root);
    let line = |rel: &str| {
        dump.iter()
            .find(|l| l.split(' ').next() == Some(rel))
            .cloned()
    };
    for e in exp {
        match e {
            Exp::Entry(path, head, body) => {
                let rel = path.trim_start_matches('/');
                let l = line(rel).unwrap_or_else(|| panic!("{case}: {path} missing"));
                assert_eq!(l, format!("{rel} {head}"), "{case}: {path}");
                if let Some(b) = body {
                    let got = fs::read(root.join(rel)).unwrap();
                    assert_eq!(String::from_utf8_lossy(&got), *b, "{case}: {path} contents");
                }
            }
            Exp::Link(path, target) => {
                let rel = path.trim_start_matches('/');
                let got =
                    fs::read_link(root.join(rel)).unwrap_or_else(|e| panic!("{case}: {path}: {e}"));
                assert_eq!(got, Path::new(target), "{case}: {path}");
            }
            Exp::Contains(path, needle) | Exp::Lacks(path, needle) => {
                let got = fs::read_to_string(root.join(path.trim_start_matches('/')))
                    .unwrap_or_else(|e| panic!("{case}: {path}: {e}"));
                assert_eq!(
                    got.contains(needle),
                    matches!(e, Exp::Contains(..)),
                    "{case}: {path} and {needle:?}:\n{got}"
                );
            }
            Exp::Absent(path) => {
                assert!(
                    line(path.trim_start_matches('/')).is_none(),
                    "{case}: {path} exists"
                );
            }
        }
    }
}

/// The versions a case runs at: from `min` to `max` of Ignition's list.
fn versions(min: &str, max: &str) -> Vec<&'static str> {
    let i = VERSIONS.iter().position(|v| *v == min).unwrap();
    let j = VERSIONS.iter().position(|v| *v == max).unwrap();
    VERSIONS[i..=j].to_vec()
}

struct Positive {
    name: &'static str,
    origin: &'static str,
    min: &'static str,
    max: &'static str,
    pre: &'static [Pre],
    config: &'static str,
    exp: &'static [Exp],
}

const IGN_POSITIVE: &[Positive] = &[
    Positive {
        name: "files.create",
        origin: "tests/positive/files/file.go CreateFileOnRoot",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,example%20file%0A"}}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 0:0", Some("example file\n")), Exp::Entry("/foo", "d 0755 0:0", None)],
    },
    Positive {
        name: "files.create.base64",
        origin: "tests/positive/files/file.go CreateFileOnRootFromBase64",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:;base64,ZXhhbXBsZSBmaWxlCg=="}}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 0:0", Some("example file\n"))],
    },
    Positive {
        name: "files.owner.byid",
        origin: "tests/positive/files/file.go UserGroupByID",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,example%20file%0A"},"user":{"id":500},"group":{"id":500}}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 500:500", Some("example file\n"))],
    },
    Positive {
        name: "files.owner.byname",
        origin: "tests/positive/files/file.go UserGroupByName",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,example%20file%0A"},"user":{"name":"core"},"group":{"name":"core"}}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 500:500", Some("example file\n"))],
    },
    Positive {
        name: "files.create.force",
        origin: "tests/positive/files/file.go ForceFileCreation (http source inlined)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::File("/foo/bar", "hello, world", 0o644, 0, 0)],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,asdf%0Afdsa"},"overwrite":true}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 0:0", Some("asdf\nfdsa"))],
    },
    Positive {
        name: "files.append.withcreate",
        origin: "tests/positive/files/file.go AppendToAFile",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,example%20file%0A"},"user":{"id":500},"group":{"id":500},"append":[{"source":"data:,hello%20world%0A"}]}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 500:500", Some("example file\nhello world\n"))],
    },
    Positive {
        name: "files.append.existing",
        origin: "tests/positive/files/file.go AppendToExistingFile",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::File("/foo/bar", "example file\n", 0o640, 500, 500)],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","append":[{"source":"data:,hello%20world%0A"}]}]}}"#,
        // The existing file keeps its owner and mode.
        exp: &[Exp::Entry("/foo/bar", "f 0640 500:500", Some("example file\nhello world\n"))],
    },
    Positive {
        name: "files.append.nonexistent",
        origin: "tests/positive/files/file.go AppendToNonexistentFile",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/bar","append":[{"source":"data:,hello%20world%0A"}],"group":{"id":500}}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "f 0644 0:500", Some("hello world\n"))],
    },
    Positive {
        name: "files.customperms",
        origin: "tests/positive/files/file.go ApplyCustomFilePermissions (without its shouldExist:false entries)",
        min: "3.6.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/setuidsetgid","contents":{"source":"data:,hello%20world%0A"},"mode":3565},{"path":"/foo/setuid","contents":{"source":"data:,hello%20world%0A"},"mode":2541},{"path":"/foo/setgid","contents":{"source":"data:,hello%20world%0A"},"mode":1517}]}}"#,
        exp: &[
            Exp::Entry("/foo/setuidsetgid", "f 6755 0:0", Some("hello world\n")),
            Exp::Entry("/foo/setuid", "f 4755 0:0", None),
            Exp::Entry("/foo/setgid", "f 2755 0:0", None),
        ],
    },
    Positive {
        name: "files.customperms.pre-#2042-fix",
        origin: "tests/positive/files/file.go ApplyCustomFilePermissionsBeforeBugfix (without its shouldExist:false entries; upstream runs 3.2.0-3.5.0, the warning exists from 3.0.0)",
        min: "3.0.0",
        max: "3.5.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/setuidsetgid","contents":{"source":"data:,hello%20world%0A"},"mode":3565},{"path":"/foo/setuid","contents":{"source":"data:,hello%20world%0A"},"mode":2541}]}}"#,
        exp: &[
            Exp::Entry("/foo/setuidsetgid", "f 0755 0:0", None),
            Exp::Entry("/foo/setuid", "f 0755 0:0", None),
        ],
    },
    Positive {
        name: "files.create.emptysource",
        origin: "config/v3_6/types/url.go validateURL (an empty source is a valid, empty file)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/empty","contents":{"source":""}}]}}"#,
        exp: &[Exp::Entry("/foo/empty", "f 0644 0:0", Some(""))],
    },
    Positive {
        name: "files.nosource.keeps-existing",
        origin: "internal/exec/stages/files/filesystemEntries.go fileEntry.create (no source: the file is kept, mode and owner applied)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::File("/etc/keep", "keep me\n", 0o600, 500, 500)],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/etc/keep","mode":416}]}}"#,
        exp: &[Exp::Entry("/etc/keep", "f 0640 500:500", Some("keep me\n"))],
    },
    Positive {
        name: "directories.create",
        origin: "tests/positive/files/directory.go CreateDirectoryOnRoot",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"directories":[{"path":"/foo/bar"}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "d 0755 0:0", None)],
    },
    Positive {
        name: "directories.match",
        origin: "tests/positive/files/directory.go DirCreationOverNonemptyDir",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::Dir("/foo/bar")],
        config: r#"{"ignition":{"version":"$version"},"storage":{"directories":[{"path":"/foo/bar","mode":511}]}}"#,
        exp: &[Exp::Entry("/foo/bar", "d 0777 0:0", None), Exp::Entry("/foo/bar/keep", "f 0644 0:0", Some("x"))],
    },
    Positive {
        name: "directories.ordering",
        origin: "tests/positive/files/directory.go CheckOrdering",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"directories":[{"path":"/foo/bar/baz","mode":511,"overwrite":false},{"path":"/baz/quux","mode":493,"overwrite":false}]}}"#,
        exp: &[Exp::Entry("/foo/bar/baz", "d 0777 0:0", None), Exp::Entry("/baz/quux", "d 0755 0:0", None)],
    },
    Positive {
        name: "links.sym.create",
        origin: "tests/positive/files/link.go CreateSymlinkOnRoot",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"storage":{"links":[{"path":"/foo/bar","target":"/foo/target","hard":false}]}}"#,
        exp: &[Exp::Link("/foo/bar", "/foo/target")],
    },
    Positive {
        name: "links.sym.match",
        origin: "tests/positive/files/link.go MatchSymlinkOnRoot",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::Link("/existing", "/target")],
        config: r#"{"ignition":{"version":"$version"},"storage":{"links":[{"path":"/existing","target":"/target"}]}}"#,
        exp: &[Exp::Link("/existing", "/target")],
    },
    Positive {
        name: "links.sym.create.force",
        origin: "tests/positive/files/link.go ForceLinkCreation (http source inlined)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[Pre::File("/foo/bar", "a file", 0o644, 0, 0)],
        config: r#"{"ignition":{"version":"$version"},"storage":{"files":[{"path":"/foo/target","contents":{"source":"data:,asdf"}}],"links":[{"path":"/foo/bar","target":"/foo/target","overwrite":true}]}}"#,
        exp: &[Exp::Link("/foo/bar", "/foo/target"), Exp::Entry("/foo/target", "f 0644 0:0", Some("asdf"))],
    },
    Positive {
        name: "users.add",
        origin: "tests/positive/passwd/users.go AddPasswdUsers (key shortened)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"passwd":{"users":[{"name":"test","passwordHash":"zJW/EKqqIk44o","sshAuthorizedKeys":["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDBRZPFJNOvQRfokigTtl0IBi71LHZrFOk4EJ3Zowtk stephenlowrie@localhost.localdomain"]},{"name":"jenkins","uid":1020,"shouldExist":true}]}}"#,
        exp: &[
            Exp::Contains("/etc/passwd", "\ntest:x:1000:1000::/home/test:/bin/sh\n"),
            Exp::Contains("/etc/passwd", "\njenkins:x:1020:1020::/home/jenkins:/bin/sh\n"),
            Exp::Contains("/etc/shadow", "\ntest:zJW/EKqqIk44o:"),
            Exp::Entry("/home/test/.ssh/authorized_keys", "f 0600 1000:1000", Some("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDBRZPFJNOvQRfokigTtl0IBi71LHZrFOk4EJ3Zowtk stephenlowrie@localhost.localdomain\n")),
        ],
    },
    Positive {
        name: "groups.add",
        origin: "tests/positive/passwd/users.go AddGroups",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"passwd":{"groups":[{"name":"testgroup","gid":1500},{"name":"systemgroup","system":true}]}}"#,
        exp: &[
            Exp::Contains("/etc/group", "\ntestgroup:x:1500:\n"),
            Exp::Contains("/etc/group", "\nsystemgroup:x:999:\n"),
            Exp::Contains("/etc/gshadow", "\ntestgroup:!::\n"),
        ],
    },
    Positive {
        name: "systemd.unit.create",
        origin: "tests/positive/systemd/create_unit.go CreateSystemdService (enabled through the [Install] link, not a preset)",
        min: "3.0.0",
        max: "3.6.0",
        pre: &[],
        config: r#"{"ignition":{"version":"$version"},"systemd":{"units":[{"name":"example.service","enabled":true,"contents":"[Service]\nType=oneshot\nExecStart=/usr/bin/echo Hello World\n\n[Install]\nWantedBy=multi-user.target"}]}}"#,
        exp: &[
            Exp::Entry("/etc/systemd/system/example.service", "f 0644 0:0", Some("[Service]\nType=oneshot\nExecStart=/usr/bin/echo Hello World\n\n[Install]\nWantedBy=multi-user.target")),
            Exp::Link("/etc/systemd/system/multi-user.target.wants/example.service", "/etc/systemd/system/example.service"),
        ],
    },
];

struct Negative {
    name: &'static str,
    origin: &'static str,
    pre: &'static [Pre],
    config: &'static str,
    /// Part of the error both `validate --root` and `render` must give.
    needle: &'static str,
    /// Refused by plain `validate` too (nothing in the root is needed to see it).
    static_: bool,
}

const IGN_NEGATIVE: &[Negative] = &[
    Negative {
        name: "files.create.overwrite.false",
        origin: "tests/negative/files/preexisting_nodes.go ForceFileCreation",
        pre: &[Pre::File("/foo/bar", "hello, world", 0o644, 0, 0)],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,asdf"},"overwrite":false}]}}"#,
        needle: "storage.files[0].path: /foo/bar already exists and overwrite is false",
        static_: false,
    },
    Negative {
        name: "directories.create.overwrite.false",
        origin: "tests/negative/files/preexisting_nodes.go ForceDirCreation",
        pre: &[Pre::File("/foo/bar", "a file", 0o644, 0, 0)],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"directories":[{"path":"/foo/bar"}]}}"#,
        needle: "storage.directories[0].path: /foo/bar exists and is not a directory",
        static_: false,
    },
    Negative {
        name: "links.sym.create.overwrite.false",
        origin: "tests/negative/files/preexisting_nodes.go ForceLinkCreation",
        pre: &[Pre::File("/foo/bar", "a file", 0o644, 0, 0)],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/foo/target","contents":{"source":"data:,asdf"}}],"links":[{"path":"/foo/bar","target":"/foo/target"}]}}"#,
        needle: "storage.links[0].path: /foo/bar exists and is not this link",
        static_: false,
    },
    Negative {
        name: "files.creates.overwrite.false.overdir",
        origin: "tests/negative/files/preexisting_nodes.go ForceFileCreationOverNonemptyDir",
        pre: &[Pre::Dir("/foo/bar")],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/foo/bar","contents":{"source":"data:,asdf"},"overwrite":false}]}}"#,
        needle: "storage.files[0].path: /foo/bar is an existing directory",
        static_: false,
    },
    Negative {
        name: "links.sym.overwritelink",
        origin: "tests/negative/files/link.go WriteOverBrokenSymlink",
        pre: &[Pre::Link("/etc/file", "/usr/rofile")],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/etc/file","overwrite":false,"mode":420,"contents":{"source":""}}]}}"#,
        needle: "storage.files[0].path: /etc/file exists and is not a regular file",
        static_: false,
    },
    Negative {
        name: "links.sym.badmatch",
        origin: "tests/negative/files/link.go FailMatchSymlinkOnRoot",
        pre: &[Pre::Link("/existing", "/not-target")],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"links":[{"path":"/existing","target":"/target"}]}}"#,
        needle: "storage.links[0].path: /existing exists and is not this link",
        static_: false,
    },
    Negative {
        name: "files.verification.badhash.dataurl",
        origin: "tests/negative/files/invalid_hash.go InvalidHash",
        pre: &[],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/tmp0/test","contents":{"source":"data:,asdf","verification":{"hash":"sha512-1a04c76c17079cd99e688ba4f1ba095b927d3fecf2b1e027af361dfeafb548f7f5f6fdd675aaa2563950db441d893ca77b0c3e965cdcb891784af96e330267d7"}}}]}}"#,
        needle: "storage.files[0].contents.verification.hash: the contents do not match",
        static_: true,
    },
    Negative {
        name: "files.verification.badhash.dataurl.sha256",
        origin: "tests/negative/files/invalid_hash.go InvalidHashForSHA256",
        pre: &[],
        config: r#"{"ignition":{"version":"3.1.0"},"storage":{"files":[{"path":"/tmp0/test","contents":{"source":"data:,asdf","verification":{"hash":"sha256-e57cc41647638ccb9fb6844f2810807bcaa2aa800438cfb065f17adf6afb48d0"}}}]}}"#,
        needle: "the contents do not match (sha256 is",
        static_: true,
    },
    Negative {
        name: "links.hard.create",
        origin: "tests/positive/files/link.go CreateHardLinkOnRoot (a deliberate difference: refused here)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.0.0"},"storage":{"files":[{"path":"/foo/target","contents":{"source":"data:,asdf"}}],"links":[{"path":"/foo/bar","target":"/foo/target","hard":true}]}}"#,
        needle: "storage.links[0].hard: hard links are not supported",
        static_: true,
    },
    Negative {
        name: "config.replace",
        origin: "tests/negative/general/config.go ReplaceConfigWithInvalidHash",
        pre: &[],
        config: r#"{"ignition":{"version":"3.0.0","config":{"replace":{"source":"http://127.0.0.1:8080/config"}}}}"#,
        needle: "ignition.config: not supported",
        static_: true,
    },
    Negative {
        name: "path.relative",
        origin: "config/v3_6/types/path_test.go (ErrPathRelative)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"not/absolute","contents":{"source":"data:,x"}}]}}"#,
        needle: "storage.files[0].path: \"not/absolute\" is relative",
        static_: true,
    },
    Negative {
        name: "path.dirty.double-slash",
        origin: "config/v3_6/types/path_test.go (ErrDirtyPath)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"directories":[{"path":"/foo//bar"}]}}"#,
        needle: "storage.directories[0].path: \"/foo//bar\" is not clean; write it as \"/foo/bar\"",
        static_: true,
    },
    Negative {
        name: "path.dirty.dot",
        origin: "config/v3_6/types/path_test.go (ErrDirtyPath)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"links":[{"path":"/foo/./bar","target":"/x"}]}}"#,
        needle: "is not clean",
        static_: true,
    },
    Negative {
        name: "path.dirty.trailing-slash",
        origin: "config/v3_6/types/path_test.go (ErrDirtyPath)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/foo/bar/"}]}}"#,
        needle: "is not clean",
        static_: true,
    },
    Negative {
        name: "mode.illegal",
        origin: "config/v3_6/types/mode_test.go (ErrFileIllegalMode)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","mode":4096}]}}"#,
        needle: "storage.files[0].mode: 4096 is not a mode",
        static_: true,
    },
    Negative {
        name: "mode.negative",
        origin: "config/v3_6/types/mode_test.go (ErrFileIllegalMode)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","mode":-1}]}}"#,
        needle: "storage.files[0].mode: -1 is not a mode",
        static_: true,
    },
    Negative {
        name: "node.both-id-and-name",
        origin: "config/v3_6/types/node_test.go (ErrBothIDAndNameSet)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","user":{"id":1,"name":"core"}}]}}"#,
        needle: "storage.files[0].user: give either id or name, not both",
        static_: true,
    },
    Negative {
        name: "file.overwrite-without-source",
        origin: "config/v3_6/types/file_test.go (ErrOverwriteAndNilSource)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","overwrite":true}]}}"#,
        needle: "storage.files[0].overwrite: true needs contents.source",
        static_: true,
    },
    Negative {
        name: "unit.bad-extension",
        origin: "config/v3_6/types/unit_test.go (ErrInvalidSystemdExt)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"systemd":{"units":[{"name":"test.blah","contents":"[Foo]\nQux=Bar"}]}}"#,
        needle: "systemd.units[0].name: \"test.blah\" is not a unit name",
        static_: true,
    },
    Negative {
        name: "unit.dropin-bad-extension",
        origin: "config/v3_6/types/unit_test.go (ErrInvalidSystemdDropinExt)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"systemd":{"units":[{"name":"test.service","dropins":[{"name":"test.blah","contents":"[Foo]\nQux=Bar"}]}]}}"#,
        needle: "systemd.units[0].dropins[0].name: \"test.blah\" must be a file name ending in .conf",
        static_: true,
    },
    Negative {
        name: "config.path-conflicts-systemd",
        origin: "config/v3_6/types/config_test.go (ErrPathConflictsSystemd)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/etc/systemd/system/foo.service","contents":{"source":"data:,x"}}]},"systemd":{"units":[{"name":"foo.service","contents":"[Service]\nExecStart=/bin/true\n"}]}}"#,
        needle: "storage.files[0].path: /etc/systemd/system/foo.service is where a unit or drop-in",
        static_: true,
    },
    Negative {
        name: "storage.file-used-symlink",
        origin: "config/v3_6/types/storage_test.go (ErrFileUsedSymlink)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"links":[{"path":"/foo/bar","target":"/"}],"files":[{"path":"/foo/bar/baz"}]}}"#,
        needle: "storage.files[0].path: it is below the link storage.links[0]",
        static_: true,
    },
    Negative {
        name: "storage.duplicate-path",
        origin: "config/v3_6/types/storage.go MergedKeys (files, directories and links share one key)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/foo"}],"directories":[{"path":"/foo"}]}}"#,
        needle: "storage.directories[0].path: /foo is also storage.files[0].path",
        static_: true,
    },
    Negative {
        name: "systemd.duplicate-unit",
        origin: "config/v3_6/types/unit.go Key (units are keyed by name)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"systemd":{"units":[{"name":"a.service"},{"name":"a.service","mask":true}]}}"#,
        needle: "systemd.units[1].name: unit a.service appears twice",
        static_: true,
    },
    Negative {
        name: "resource.compression-invalid",
        origin: "config/v3_6/types/resource.go validateCompression (ErrCompressionInvalid)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,x","compression":"xz"}}]}}"#,
        needle: "storage.files[0].contents.compression: \"xz\" is not supported",
        static_: true,
    },
    Negative {
        name: "resource.verification-without-source",
        origin: "config/v3_6/types/resource.go validateVerification (ErrVerificationAndNilSource)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","contents":{"verification":{"hash":"sha256-e57cc41647638ccb9fb6844f2810807bcaa2aa800438cfb065f17adf6afb48d0"}}}]}}"#,
        needle: "verification.hash is given without a source",
        static_: true,
    },
    Negative {
        name: "verification.hash-unrecognized",
        origin: "config/v3_6/types/verification_test.go (ErrHashUnrecognized)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,x","verification":{"hash":"md5-0123456789abcdef0123456789abcdef"}}}]}}"#,
        needle: "unknown hash type \"md5\"",
        static_: true,
    },
    Negative {
        name: "verification.hash-wrong-size",
        origin: "config/v3_6/types/verification_test.go (ErrHashWrongSize)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,x","verification":{"hash":"sha512-0123456789abcdef"}}}]}}"#,
        needle: "a sha512 sum has 128 hex digits, not 16",
        static_: true,
    },
    Negative {
        name: "verification.hash-malformed",
        origin: "config/v3_6/types/verification_test.go (ErrHashMalformed)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/x","contents":{"source":"data:,x","verification":{"hash":"xor01234567"}}}]}}"#,
        needle: "is not sha512-<hex> or sha256-<hex>",
        static_: true,
    },
    Negative {
        name: "passwd.users.uid-0",
        origin: "issue 15 (a second root account)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core2","uid":0}]}}"#,
        needle: "passwd.users[0].uid: 0 would make core2 a second root account",
        static_: true,
    },
    Negative {
        name: "passwd.users.missing-group",
        origin: "internal/exec/util/passwd.go EnsureUser (useradd --groups fails on a missing group)",
        pre: &[],
        config: r#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"u","groups":["docker"]}]}}"#,
        needle: "passwd.users[0]: group \"docker\" does not exist in the image",
        static_: false,
    },
];

/// Version strings Ignition refuses (`config/v3_6/config_test.go`, `types/ignition.go`:
/// only the exact known versions parse).
const BAD_VERSIONS: &[&str] = &[
    "3.5",
    "3",
    "3.5.0.1",
    "03.05.00",
    "3.5.0+build",
    "3.5.0-experimental",
    "3.7.0-experimental",
    "3.7.0",
    "4.0.0",
    "2.3.0",
    "",
];

fn refused_everywhere(case: &str, pre: &[Pre], bytes: &[u8], needle: &str, static_: bool) {
    let t = seeded(pre);
    let before = common::snapshot(t.path());
    let plain = agent::validate("case", bytes, None);
    if static_ {
        let e = plain.expect_err(case).to_string();
        assert!(
            e.contains(needle),
            "{case}: validate: {e:?} lacks {needle:?}"
        );
    } else {
        assert!(
            plain.is_ok(),
            "{case}: plain validate should need the root: {plain:?}"
        );
    }
    let with_root = agent::validate("case", bytes, Some(&Root::new(t.path())));
    let e = with_root.expect_err(case).to_string();
    assert!(
        e.contains(needle),
        "{case}: validate --root: {e:?} lacks {needle:?}"
    );
    assert!(
        e.starts_with("case: "),
        "{case}: the error names no file: {e}"
    );
    let e = render(t.path(), bytes).expect_err(case);
    assert!(e.contains(needle), "{case}: render: {e:?} lacks {needle:?}");
    assert_eq!(
        common::snapshot(t.path()),
        before,
        "{case}: the root changed"
    );
}

#[test]
fn ignition_positive() {
    let mut n = 0;
    for c in IGN_POSITIVE {
        for v in versions(c.min, c.max) {
            let case = format!("{} @ {v} ({})", c.name, c.origin);
            let cfg = c.config.replace("$version", v);
            let t = seeded(c.pre);
            let with_root = agent::validate("case", cfg.as_bytes(), Some(&Root::new(t.path())));
            assert!(with_root.is_ok(), "{case}: validate --root: {with_root:?}");
            render(t.path(), cfg.as_bytes()).unwrap_or_else(|e| panic!("{case}: {e}"));
            check(&case, t.path(), c.exp);
            n += 1;
        }
    }
    assert!(n > 100, "{n} runs");
}

#[test]
fn ignition_negative() {
    for c in IGN_NEGATIVE {
        let case = format!("{} ({})", c.name, c.origin);
        refused_everywhere(&case, c.pre, c.config.as_bytes(), c.needle, c.static_);
    }
}

#[test]
fn ignition_versions_are_exactly_upstreams() {
    assert_eq!(
        VERSIONS,
        ["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0", "3.6.0"]
    );
    for v in BAD_VERSIONS {
        let cfg = format!(r#"{{"ignition":{{"version":"{v}"}}}}"#);
        refused_everywhere(v, &[], cfg.as_bytes(), "ignition.version", true);
    }
}

fn cloud_init(name: &str) -> Vec<u8> {
    fs::read(
        common::manifest_dir()
            .join("tests/fixtures/conformance/cloud-init")
            .join(name),
    )
    .unwrap()
}

fn cloud_positive(name: &str, bytes: &[u8], exp: &[Exp]) -> Vec<String> {
    let t = seeded(&[]);
    let with_root = agent::validate(name, bytes, Some(&Root::new(t.path())));
    assert!(with_root.is_ok(), "{name}: validate --root: {with_root:?}");
    let w = render(t.path(), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    check(name, t.path(), exp);
    w
}

#[test]
fn cloud_init_write_files() {
    cloud_positive(
        "write-files.yaml",
        &cloud_init("write-files.yaml"),
        &[
            Exp::Entry(
                "/etc/sysconfig/selinux",
                "f 0644 0:0",
                Some("# This file controls the state of SELinux\nSELINUX=disabled\n"),
            ),
            Exp::Entry(
                "/etc/sysconfig/samba",
                "f 0644 0:0",
                Some("# My new /etc/sysconfig/samba file\n\nSMBDOPTIONS=\"-D\"\n"),
            ),
            Exp::Entry("/bin/arch", "f 0555 0:0", None),
            // The gzip-compressed !!binary content of the upstream example.
            Exp::Entry(
                "/usr/bin/hello",
                "f 0755 0:0",
                Some("#!/bin/sh\necho hello world\n"),
            ),
        ],
    );
    let t = seeded(&[]);
    render(t.path(), &cloud_init("write-files.yaml")).unwrap();
    let arch = fs::read(t.path().join("bin/arch")).unwrap();
    assert_eq!(&arch[..4], b"\x7fELF", "!!binary content is bytes");
}

#[test]
fn cloud_init_user_groups() {
    let w = cloud_positive(
        "user-groups.yaml",
        &cloud_init("user-groups.yaml"),
        &[
            Exp::Contains("/etc/group", "\nadmingroup:x:1000:root,sys\n"),
            Exp::Contains("/etc/group", "\ncloud-users:x:1001:\n"),
            // Groups the users name are created when missing (admin); users exists.
            Exp::Contains("/etc/group", "\nusers:x:100:foobar,barfoo\n"),
            Exp::Contains("/etc/group", "\nadmin:x:1003:barfoo\n"),
            Exp::Contains("/etc/passwd", "\nfoobar:x:1004:1002:Foo B. Bar:/home/foobar:/bin/sh\n"),
            // lock_passwd: false keeps the hash usable; barfoo has no hash and is locked.
            Exp::Contains("/etc/shadow", "\nfoobar:$6$j212wezy$7H/1LT4f9/N3wpgNunhsIqtMj62OKiS3nyNwuizouQc3u7MbYCarYeAHWYPYb2FT.lbioDm2RrkJPb9BZMN1O/:"),
            Exp::Contains("/etc/shadow", "\nbarfoo:!:"),
            Exp::Entry("/home/barfoo/.ssh/authorized_keys", "f 0600 1005:1005", None),
            Exp::Contains("/etc/passwd", "\ntestuser:x:1006:1006:Mr. Test:/local/testdir:/bin/sh\n"),
            Exp::Entry("/local/testdir", "d 0700 1006:1006", None),
            // A system user: id below 1000 and no home directory.
            Exp::Contains("/etc/passwd", "\ncloudy:x:999:999:Magic Cloud App Daemon User:/home/cloudy:/bin/sh\n"),
            Exp::Absent("/home/cloudy"),
            Exp::Contains("/etc/passwd", "\nfizzbuzz:x:1007:1007::/home/fizzbuzz:/bin/bash\n"),
        ],
    );
    for k in [
        "users[0]: \"default\" ignored",
        "users[1].ssh_import_id: ignored",
        "users[1].selinux_user: ignored",
        "users[2].sudo: ignored",
        "users[6].ssh_redirect_user: unknown key",
    ] {
        assert!(w.iter().any(|x| x.starts_with(k)), "no warning {k}: {w:?}");
    }
}

#[test]
fn cloud_init_commands_ntp_keys() {
    cloud_positive(
        "run-cmds.yaml",
        &cloud_init("run-cmds.yaml"),
        &[
            Exp::Contains("/var/lib/rke2-firstboot/runcmd.sh", "'ls' '-l' '/'\n"),
            Exp::Contains(
                "/var/lib/rke2-firstboot/runcmd.sh",
                "ls -l /root\nmkdir /run/mydir\n",
            ),
            // A failing command does not stop the next one (no `set -e`) ...
            Exp::Lacks("/var/lib/rke2-firstboot/runcmd.sh", "set -e"),
            // ... and runcmd runs once per instance even when it fails: marked before it runs.
            Exp::Contains(
                "/etc/systemd/system/rke2-firstboot-runcmd.service",
                "ExecStartPre=/bin/touch /var/lib/rke2-firstboot/runcmd.done\nExecStart=",
            ),
        ],
    );
    cloud_positive(
        "boot-cmds.yaml",
        &cloud_init("boot-cmds.yaml"),
        &[
            Exp::Contains(
                "/var/lib/rke2-firstboot/bootcmd.sh",
                "echo 192.168.1.130 us.archive.ubuntu.com >> /etc/hosts\n'cloud-init-per' 'once'",
            ),
            Exp::Lacks("/var/lib/rke2-firstboot/bootcmd.sh", "set -e"),
        ],
    );
    cloud_positive(
        "ntp.yaml",
        &cloud_init("ntp.yaml"),
        &[Exp::Contains(
            "/etc/systemd/timesyncd.conf.d/50-rke2-firstboot.conf",
            "NTP=my.ntp.server.local ntp.ubuntu.com 192.168.23.2 0.company.pool.ntp.org 1.company.pool.ntp.org ntp.myorg.org\n",
        )],
    );
    cloud_positive(
        "ssh-keys.yaml",
        &cloud_init("ssh-keys.yaml"),
        &[Exp::Contains(
            "/root/.ssh/authorized_keys",
            " smoser@brickies\n",
        )],
    );
}

#[test]
fn cloud_init_formats() {
    cloud_positive(
        "header-case.yaml",
        &cloud_init("header-case.yaml"),
        &[Exp::Entry(
            "/etc/hostname",
            "f 0644 0:0",
            Some("mixed-case\n"),
        )],
    );
    cloud_positive(
        "yaml11-booleans.yaml",
        &cloud_init("yaml11-booleans.yaml"),
        &[
            Exp::Entry("/etc/hostname", "f 0644 0:0", Some("yaml-one-one\n")),
            Exp::Contains("/etc/shadow", "\nops:$6$rounds=4096$salt$hash:"),
        ],
    );
    cloud_positive(
        "mime-multipart.txt",
        &cloud_init("mime-multipart.txt"),
        &[Exp::Entry(
            "/etc/hostname",
            "f 0644 0:0",
            Some("from-mime\n"),
        )],
    );
    cloud_positive(
        "mime-base64.txt",
        &cloud_init("mime-base64.txt"),
        &[Exp::Entry(
            "/etc/hostname",
            "f 0644 0:0",
            Some("from-base64-part\n"),
        )],
    );
    // gzip-compressed user-data (doc/rtd/explanation/format.rst), here around a MIME message.
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &cloud_init("mime-multipart.txt")).unwrap();
    cloud_positive(
        "mime-multipart.txt.gz",
        &z.finish().unwrap(),
        &[Exp::Entry(
            "/etc/hostname",
            "f 0644 0:0",
            Some("from-mime\n"),
        )],
    );
}

#[test]
fn cloud_init_append_twice_appends_twice_once_per_instance() {
    let bytes = cloud_init("append-twice.yaml");
    let t = seeded(&[]);
    render(t.path(), &bytes).unwrap();
    let want = "welcome\nline\nline\n";
    assert_eq!(fs::read_to_string(t.path().join("etc/motd")).unwrap(), want);
    // A re-run of the same configuration (after a later crash) does not append again.
    render(t.path(), &bytes).unwrap();
    assert_eq!(fs::read_to_string(t.path().join("etc/motd")).unwrap(), want);
    let md = fs::metadata(t.path().join("etc/motd")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o644, 0));
}

#[test]
fn cloud_init_negative() {
    for (name, needle, static_) in [
        (
            "negative-include.txt",
            "#include (URLs to fetch) user-data is not supported",
            true,
        ),
        (
            "negative-boothook.txt",
            "#cloud-boothook user-data is not supported",
            true,
        ),
        (
            "negative-user-script.txt",
            "shell-script user-data is not supported",
            true,
        ),
        (
            "negative-archive.txt",
            "#cloud-config-archive user-data is not supported",
            true,
        ),
        (
            "negative-jinja.yaml",
            "Jinja template user-data is not supported",
            true,
        ),
        (
            "negative-mime-script.txt",
            "MIME part 1 of type text/x-shellscript user-data is not supported",
            true,
        ),
        (
            "negative-disk-setup.yaml",
            "disk_setup: not supported (the image has a fixed partition layout)",
            true,
        ),
        ("negative-mount-points.yaml", "mounts: not supported", true),
        ("negative-snapuser.yaml", "users[0].name is required", true),
        (
            "negative-gzip-text.yaml",
            "write_files[0].encoding: gzip needs binary content",
            true,
        ),
        (
            "negative-two-documents.yaml",
            "more than one YAML document",
            true,
        ),
        (
            "negative-system-user-keys.yaml",
            "users[0].ssh_authorized_keys: user cloudy gets no home directory",
            false,
        ),
    ] {
        refused_everywhere(name, &[], &cloud_init(name), needle, static_);
    }
    // Written inline: the issue's security and conflict cases in cloud-config form.
    for (cfg, needle) in [
        (
            "#cloud-config\nwrite_files:\n  - path: /x\n    content: x\n    permissions: 4294969837\n",
            "write_files[0].permissions: 4294969837 is not a mode",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /etc/rancher/rke2/config.yaml\n    content: 'token: x'\nrke2:\n  role: server\n",
            "write_files[0].path: /etc/rancher/rke2/config.yaml is written from the rke2: section",
        ),
        (
            "#cloud-config\nusers:\n  - name: ops\n    uid: 0\n",
            "users[0].uid: 0 would make ops a second root account",
        ),
        (
            "#cloud-config\nusers:\n  - name: ops\n    gecos: \"a:b\"\n",
            "users[0]: the gecos contains ':'",
        ),
    ] {
        refused_everywhere(cfg, &[], cfg.as_bytes(), needle, true);
    }
}
