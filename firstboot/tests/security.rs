//! Issue 15's security and all-or-nothing cases, by name, and a seeded property test: for any
//! configuration `render` refuses, the root is byte-for-byte unchanged, and `validate --root`
//! agrees with `render` on every configuration that is not cut short by an injected failure.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rke2_firstboot::agent;
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::render::{Phase, RenderError, PHASES};
use rke2_firstboot::sources::Found;
use serde_json::{json, Value};

/// `validate --root` then `render` into `root`; both results, as error texts.
fn validate_and_render(
    root: &Path,
    bytes: &[u8],
    fail_before: Option<Phase>,
) -> (Result<Vec<String>, String>, Result<(), String>) {
    let v = agent::validate("cfg", bytes, Some(&Root::new(root))).map_err(|e| e.to_string());
    let found = Found {
        origin: "cfg".into(),
        bytes: bytes.to_vec(),
        meta_hostname: None,
    };
    let r = agent::load(&found, &Identity::default())
        .and_then(|l| {
            agent::render_to(&Root::new(root), &l, &mut |p| match fail_before {
                Some(f) if f == p => Err(RenderError::Interrupted(p)),
                _ => Ok(()),
            })
        })
        .map_err(|e| e.to_string());
    (v, r)
}

/// A seeded root: the common Debian-like /etc plus a directory, a file and a symlink.
fn seeded() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    fs::create_dir_all(t.path().join("srv/data")).unwrap();
    fs::write(t.path().join("etc/motd"), "welcome\n").unwrap();
    std::os::unix::fs::symlink("/etc/motd", t.path().join("etc/motd.link")).unwrap();
    t
}

/// Asserts both `validate --root` and `render` refuse `bytes`, naming `needle`, and the root
/// is unchanged.
fn refused(bytes: &[u8], needle: &str) {
    let t = seeded();
    let before = common::snapshot(t.path());
    let (v, r) = validate_and_render(t.path(), bytes, None);
    let ve = v.expect_err("validate --root accepted it");
    let re = r.expect_err("render accepted it");
    assert!(ve.contains(needle), "validate: {ve:?} lacks {needle:?}");
    assert!(re.contains(needle), "render: {re:?} lacks {needle:?}");
    assert!(
        ve.starts_with("cfg: ") && re.starts_with("cfg: "),
        "{ve} / {re}"
    );
    assert_eq!(common::snapshot(t.path()), before, "the root changed");
}

fn rendered(bytes: &[u8]) -> (tempfile::TempDir, Vec<String>) {
    let t = seeded();
    let (v, r) = validate_and_render(t.path(), bytes, None);
    r.unwrap();
    (t, v.unwrap())
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn mode_wraparound_via_ignition_is_refused() {
    // 2^32 + 0o4755: narrowed to u32 it would be a setuid 4755.
    refused(
        br#"{"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/usr/local/bin/x","mode":4294969837,"contents":{"source":"data:,x"}}]}}"#,
        "storage.files[0].mode: 4294969837 is not a mode",
    );
    refused(
        br#"{"ignition":{"version":"3.6.0"},"storage":{"directories":[{"path":"/srv/x","mode":4096}]}}"#,
        "storage.directories[0].mode: 4096 is not a mode",
    );
}

#[test]
fn mode_wraparound_via_cloud_config_permissions_is_refused() {
    refused(
        b"#cloud-config\nwrite_files:\n  - path: /usr/local/bin/x\n    content: x\n    permissions: 4294969837\n",
        "write_files[0].permissions: 4294969837 is not a mode",
    );
    refused(
        b"#cloud-config\nwrite_files:\n  - path: /usr/local/bin/x\n    content: x\n    permissions: '040000000004755'\n",
        "write_files[0].permissions",
    );
}

#[test]
fn ignition_mode_as_a_string_is_refused() {
    refused(
        br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/x","mode":"0644"}]}}"#,
        "storage.files[0].mode: \"0644\" is not a number",
    );
}

#[test]
fn lock_passwd_defaults_to_locked() {
    let (t, _) = rendered(
        b"#cloud-config\nusers:\n  - name: ops\n    passwd: $6$salt$hash\n  - name: dev\n    passwd: $6$salt$hash2\n    lock_passwd: false\n",
    );
    let shadow = fs::read_to_string(t.path().join("etc/shadow")).unwrap();
    assert!(shadow.contains("\nops:!$6$salt$hash:"), "{shadow}");
    assert!(shadow.contains("\ndev:$6$salt$hash2:"), "{shadow}");
}

#[test]
fn setuid_bits_before_spec_3_6_are_dropped_with_a_warning() {
    let cfg = |v: &str| {
        format!(
            r#"{{"ignition":{{"version":"{v}"}},"storage":{{"files":[{{"path":"/usr/local/bin/x","mode":2541,"contents":{{"source":"data:,x"}}}}],"directories":[{{"path":"/srv/shared","mode":1023}}]}}}}"#
        )
    };
    for v in ["3.0.0", "3.3.0", "3.5.0"] {
        let (t, warnings) = rendered(cfg(v).as_bytes());
        assert_eq!(mode_of(&t.path().join("usr/local/bin/x")), 0o755, "{v}");
        assert_eq!(mode_of(&t.path().join("srv/shared")), 0o777, "{v}");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("storage.files[0].mode: setuid/setgid/sticky")),
            "{v}: {warnings:?}"
        );
    }
    let (t, _) = rendered(cfg("3.6.0").as_bytes());
    assert_eq!(mode_of(&t.path().join("usr/local/bin/x")), 0o4755);
    assert_eq!(mode_of(&t.path().join("srv/shared")), 0o1777);
}

#[test]
fn uid_0_is_refused_for_any_user_but_root() {
    refused(
        br#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core","uid":0}]}}"#,
        "passwd.users[0].uid: 0 would make core a second root account",
    );
    refused(
        b"#cloud-config\nusers:\n  - name: ops\n    uid: 0\n",
        "users[0].uid: 0 would make ops a second root account",
    );
}

#[test]
fn a_refused_configuration_leaves_no_users_behind() {
    // The user would be written in the users phase; the file after it refuses the whole
    // configuration (overwrite is false), before anything is written.
    refused(
        br#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core"}]},"storage":{"files":[{"path":"/etc/motd","contents":{"source":"data:,new"}}]}}"#,
        "storage.files[0].path: /etc/motd already exists and overwrite is false",
    );
}

#[test]
fn a_failure_in_any_phase_rolls_back_everything() {
    let cfg = br#"{"ignition":{"version":"3.6.0"},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["ssh-ed25519 AAAA core"]}]},"storage":{"files":[{"path":"/etc/motd","overwrite":true,"contents":{"source":"data:,new"},"mode":384},{"path":"/srv/new/deep/f","contents":{"source":"data:,x"}}],"links":[{"path":"/etc/motd.link","target":"/srv/x","overwrite":true}]},"systemd":{"units":[{"name":"x.service","enabled":true,"contents":"[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"}]}}"#;
    for p in PHASES {
        let t = seeded();
        let before = common::snapshot(t.path());
        let (_, r) = validate_and_render(t.path(), cfg, Some(p));
        let e = r.expect_err("the injected failure must fail the render");
        assert!(e.contains("interrupted before phase"), "{e}");
        assert_eq!(
            common::snapshot(t.path()),
            before,
            "root changed after a failure before {}",
            p.name()
        );
    }
}

#[test]
fn validate_agrees_with_render_on_what_validate_used_to_accept() {
    let long = "x".repeat(256);
    let file = |path: &str| {
        json!({"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":path,"contents":{"source":"data:,x"}}]}}).to_string()
    };
    let user =
        |u: Value| json!({"ignition":{"version":"3.6.0"},"passwd":{"users":[u]}}).to_string();
    let cases = [
        (file("/etc/../x"), "is not clean"),
        (file("/etc/a\u{0}b"), "NUL"),
        (file("/"), "names the root itself"),
        (file(""), "storage.files[0].path is required"),
        (file(&format!("/srv/{long}")), "component of 256 bytes"),
        (
            user(json!({"name":"u","gecos":"a:b"})),
            "passwd.users[0]: the gecos contains ':'",
        ),
        (
            user(json!({"name":"u","shell":"/bin/sh\nroot::0:0::/:/bin/sh"})),
            "the shell contains ':', a line break",
        ),
        (
            user(json!({"name":"u","passwordHash":"x\nroot::"})),
            "the password hash contains",
        ),
        (
            user(json!({"name":"u","sshAuthorizedKeys":["ssh-ed25519 A\ncommand=x"]})),
            "an ssh authorized key contains a line break",
        ),
        (
            user(json!({"name":"u","groups":["docker"]})),
            "group \"docker\" does not exist in the image",
        ),
        (
            json!({"ignition":{"version":"3.6.0"},"storage":{"links":[{"path":"/srv/l","target":"/tmp"}],"directories":[{"path":"/srv/l/d"}]}}).to_string(),
            "storage.directories[0].path: it is below the link storage.links[0]",
        ),
        (
            json!({"ignition":{"version":"3.6.0"},"storage":{"files":[{"path":"/srv/data","contents":{"source":"data:,x"}}]}}).to_string(),
            "is an existing directory",
        ),
    ];
    for (cfg, needle) in cases {
        refused(cfg.as_bytes(), needle);
    }
}

/// xorshift64*: a small deterministic generator (no new dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

impl Rng {
    /// Mostly a valid choice; now and then one the configuration must be refused for.
    fn mix<T: Clone>(&mut self, good: &[T], bad: &[T]) -> T {
        if self.chance(6) {
            self.pick(bad)
        } else {
            self.pick(good)
        }
    }
}

const GOOD_PATHS: &[&str] = &[
    "/etc/motd",
    "/etc/motd.link",
    "/srv/data",
    "/srv/data/f",
    "/srv/new/f",
    "/srv/l",
    "/opt/a",
    "/opt/a/b",
    "/opt/c",
];
const BAD_PATHS: &[&str] = &["rel/path", "/etc//x", "/etc/../x", "/etc/passwd", "/"];

fn path(r: &mut Rng) -> &'static str {
    r.mix(GOOD_PATHS, BAD_PATHS)
}

fn owner(r: &mut Rng) -> Option<Value> {
    r.mix(
        &[
            None,
            None,
            Some(json!({"name":"root"})),
            Some(json!({"id":1000})),
        ],
        &[
            Some(json!({"name":"nobody"})),
            Some(json!({"id":1,"name":"root"})),
        ],
    )
}

fn ignition(r: &mut Rng) -> Value {
    let mut files = Vec::new();
    for _ in 0..r.below(3) {
        let mut f = json!({"path": path(r)});
        if r.chance(70) {
            f["contents"] = json!({"source": r.pick(&["data:,hello", "", "data:;base64,aGk="])});
            if r.chance(50) {
                f["overwrite"] = json!(true);
            }
        } else if r.chance(10) {
            f["overwrite"] = json!(true);
        }
        if r.chance(30) {
            f["append"] = json!([{"source":"data:,more"}]);
        }
        if let Some(m) = r.mix(
            &[None, Some(json!(420)), Some(json!(2541))],
            &[Some(json!(4294969837u64)), Some(json!("0644"))],
        ) {
            f["mode"] = m;
        }
        if let Some(o) = owner(r) {
            f["user"] = o;
        }
        files.push(f);
    }
    let mut dirs = Vec::new();
    for _ in 0..r.below(2) {
        let mut d = json!({"path": path(r)});
        if r.chance(50) {
            d["mode"] = json!(r.mix(&[493, 448, 1023], &[8192]));
        }
        if r.chance(30) {
            d["overwrite"] = json!(true);
        }
        if let Some(o) = owner(r) {
            d["group"] = o;
        }
        dirs.push(d);
    }
    let mut links = Vec::new();
    for _ in 0..r.below(2) {
        let mut l = json!({"path": path(r), "target": r.mix(&["/etc/motd", "/srv/x"], &[""])});
        if r.chance(40) {
            l["overwrite"] = json!(true);
        }
        links.push(l);
    }
    let mut users = Vec::new();
    for _ in 0..r.below(3) {
        let mut u = json!({"name": r.mix(&["core", "root", "ops"], &["bad:name"])});
        if let Some(uid) = r.mix(&[None, None, Some(1000), Some(4000)], &[Some(0), Some(27)]) {
            u["uid"] = json!(uid);
        }
        let groups: Vec<&str> = r.mix(&[vec![], vec!["sudo"]], &[vec!["docker"]]);
        u["groups"] = json!(groups);
        if r.chance(20) {
            u["gecos"] = json!(r.mix(&["Core"], &["a:b"]));
        }
        if r.chance(40) {
            u["sshAuthorizedKeys"] = json!([r.mix(&["ssh-ed25519 AAAA k"], &["a\nb"])]);
        }
        users.push(u);
    }
    let mut groups = Vec::new();
    for _ in 0..r.below(2) {
        let mut g = json!({"name": r.pick(&["docker", "sudo", "wheel"])});
        if let Some(gid) = r.mix(&[None, Some(2000)], &[Some(0), Some(27)]) {
            g["gid"] = json!(gid);
        }
        groups.push(g);
    }
    let mut units = Vec::new();
    for _ in 0..r.below(2) {
        let mut u = json!({"name": r.mix(&["a.service", "b.timer"], &["c.bad"])});
        if r.chance(70) {
            u["contents"] = json!(r.mix(
                &["[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"],
                &["[Service]\nExecStart=/bin/true\n"],
            ));
        }
        if r.chance(50) {
            u["enabled"] = json!(true);
        }
        units.push(u);
    }
    json!({
        "ignition": {"version": r.mix(&["3.6.0", "3.4.0", "3.0.0"], &["3.5", "3.7.0-experimental"])},
        "storage": {"files": files, "directories": dirs, "links": links},
        "passwd": {"users": users, "groups": groups},
        "systemd": {"units": units},
    })
}

/// cloud-config as JSON (YAML is a superset).
fn cloud_config(r: &mut Rng) -> Value {
    let mut files = Vec::new();
    for _ in 0..r.below(4) {
        let mut f = json!({"path": path(r), "content": "data\n"});
        if r.chance(40) {
            f["permissions"] = json!(r.mix(&["0644", "04755", "0600"], &["0999", "4294969837"]));
        }
        if r.chance(30) {
            f["append"] = json!(true);
        }
        if r.chance(30) {
            f["owner"] = json!(r.mix(&["root:root", "ops:ops", "1000:1000"], &["nobody:nogroup"]));
        }
        files.push(f);
    }
    let mut users = Vec::new();
    for _ in 0..r.below(3) {
        let mut u = json!({"name": r.pick(&["ops", "root", "svc"])});
        if r.chance(30) {
            u["uid"] = json!(r.mix(&[1000, 4000], &[0, 27]));
        }
        if r.chance(30) {
            u["groups"] = json!(r.pick(&["sudo", "docker, sudo"]));
        }
        if r.chance(30) {
            u["passwd"] = json!("$6$s$h");
        }
        if r.chance(20) {
            u["system"] = json!(true);
        }
        users.push(u);
    }
    json!({"write_files": files, "users": users, "hostname": r.mix(&["node-1"], &["bad_host"])})
}

#[test]
fn property_refused_configurations_leave_the_root_unchanged() {
    let mut r = Rng(0x005e_ed15);
    let (mut accepted, mut refused_n, mut injected) = (0, 0, 0);
    for i in 0..300 {
        let bytes = if r.chance(60) {
            ignition(&mut r).to_string().into_bytes()
        } else {
            format!("#cloud-config\n{}\n", cloud_config(&mut r)).into_bytes()
        };
        let fail_before = r.chance(50).then(|| r.pick(&PHASES));
        let t = seeded();
        let before = common::snapshot(t.path());
        let (v, rendered) = validate_and_render(t.path(), &bytes, fail_before);
        let text = String::from_utf8_lossy(&bytes);
        match (&rendered, fail_before) {
            (Err(e), _) => {
                assert_eq!(
                    common::snapshot(t.path()),
                    before,
                    "case {i}: render refused ({e}) but the root changed:\n{text}"
                );
                if fail_before.is_some() && e.contains("interrupted before phase") {
                    injected += 1;
                } else {
                    assert!(
                        v.is_err(),
                        "case {i}: validate --root accepted what render refused ({e}):\n{text}"
                    );
                    refused_n += 1;
                }
            }
            (Ok(()), _) => {
                assert!(
                    v.is_ok(),
                    "case {i}: validate --root refused ({:?}) what render accepted:\n{text}",
                    v.err()
                );
                accepted += 1;
            }
        }
    }
    // The generator must exercise all three outcomes, or the property says little.
    assert!(
        accepted > 20 && refused_n > 20 && injected > 20,
        "{accepted} {refused_n} {injected}"
    );
}

#[test]
fn errors_name_the_file_and_key_and_no_parser_internals() {
    let bomb = "#cloud-config\na: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
    for (cfg, needle) in [
        (bomb, "the document is too complex"),
        (
            "#cloud-config\nhostname: a\nhostname: b\n",
            "a key appears twice",
        ),
        (
            "#cloud-config\na: 1\n---\nb: 2\n",
            "more than one YAML document",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /x\n    content: !!binary |\n      %%%%\n",
            "write_files[0].content: not valid base64",
        ),
        ("#cloud-config\nfoo: [\n", "invalid YAML"),
        (
            "{\"ignition\":{\"version\":\"3.6.0\"}, x}",
            "not valid JSON at line 1",
        ),
        (
            "apiVersion: rke2-image/v1\nkind: NodeConfig\nbogus: 1\n",
            "unknown key `bogus`",
        ),
    ] {
        let e = agent::validate("node.cfg", cfg.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("node.cfg: "), "{e}");
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        for internal in ["{ ", "Options", "Budget", "Recorded", "Documents", "tmp"] {
            assert!(!e.contains(internal), "{e:?} shows {internal:?}");
        }
    }
}
