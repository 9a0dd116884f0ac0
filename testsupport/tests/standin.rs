//! The stand-in `rke2 server` / `rke2 agent` against each other, against curl and openssl as
//! independent clients, and against the node agent's join preflight.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers outside #[test] included)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rke2_firstboot::dialects::native::Role;
use rke2_firstboot::preflight::{self, Backoff, PreflightError};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_rke2");

struct Server {
    p: rke2_testsupport::ServerProcess,
    port: u16,
    root: PathBuf,
}

impl Server {
    fn start(root: &Path, ready_delay: u64) -> Server {
        Server::start_with(root, ready_delay, None, "127.0.0.1:0")
    }

    fn start_with(
        root: &Path,
        ready_delay: u64,
        notify_socket: Option<&Path>,
        bind: &str,
    ) -> Server {
        let delay = ready_delay.to_string();
        let p = rke2_testsupport::ServerProcess::start(
            Path::new(BIN),
            root,
            &["--bind", bind, "--ready-delay", &delay],
            notify_socket,
        )
        .unwrap();
        Server {
            port: p.port,
            root: root.to_path_buf(),
            p,
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.root.join("var/lib/rancher/rke2/server/token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn password(&self) -> String {
        self.token().rsplit_once(':').unwrap().1.to_string()
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> PathBuf {
        self.root
            .join("var/lib/rancher/rke2/server/tls/server-ca.crt")
    }

    fn drain_log(&self) -> String {
        self.p.drain_log()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn agent_root(server: &Server, token: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("etc/rancher/rke2/config.yaml"),
        &format!(
            "server: {}\ntoken: {token}\nnode-label:\n  - a=b\n",
            server.url()
        ),
    );
    d
}

fn agent(root: &Path, timeout: u64) -> Output {
    Command::new(BIN)
        .args([
            "agent",
            "--exit-after-join",
            "--timeout",
            &timeout.to_string(),
            "--root",
        ])
        .arg(root)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[test]
fn server_protocol_with_curl_and_openssl() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("etc/hostname"), "node1\n");
    let s = Server::start(d.path(), 2);
    let ca = s.ca_file();
    let ca = ca.to_str().unwrap();
    // /cacerts is the CA file and the token pins its exact bytes.
    let (code, cacerts) = curl(&["-k", &format!("{}/cacerts", s.url())]);
    assert_eq!(code, 200);
    assert_eq!(cacerts.as_bytes(), std::fs::read(ca).unwrap());
    let hash = hex::encode(Sha256::digest(cacerts.as_bytes()));
    let token = s.token();
    assert!(
        token.starts_with(&format!("K10{hash}::server:")),
        "token {token:?}"
    );
    assert!(s.password().len() >= 16);
    // The serving certificate chains to that CA for 127.0.0.1 (curl verifies).
    assert_eq!(
        curl(&["--cacert", ca, &format!("{}/ping", s.url())]),
        (200, "pong".into())
    );
    let o = Command::new("openssl")
        .args(["verify", "-CAfile", ca])
        .arg(
            d.path()
                .join("var/lib/rancher/rke2/server/tls/serving-kube-apiserver.crt"),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(
            d.path()
                .join("var/lib/rancher/rke2/server/tls/serving-kube-apiserver.crt"),
        )
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&o.stdout);
    assert!(
        sans.contains("IP Address:127.0.0.1") && sans.contains("DNS:node1"),
        "{sans}"
    );
    // Every global address of this machine (per `ip`) is a SAN, so agents can use any of them.
    let ip = Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&ip.stdout).lines() {
        let mut w = l
            .split_whitespace()
            .skip_while(|w| *w != "inet" && *w != "inet6");
        w.next();
        let addr = w.next().unwrap().split('/').next().unwrap();
        let want = addr.parse::<std::net::IpAddr>().unwrap();
        assert!(
            sans.split(", ")
                .filter_map(|x| x.trim().strip_prefix("IP Address:"))
                .any(|x| x.parse::<std::net::IpAddr>().ok() == Some(want)),
            "{addr} missing from {sans}"
        );
    }
    // readyz: 401 without or with bad credentials, 503 while starting, then ok for both users.
    let readyz = format!("{}/v1-rke2/readyz", s.url());
    let node = format!("node:{}", s.password());
    let server = format!("server:{}", s.password());
    assert_eq!(curl(&["--cacert", ca, &readyz]).0, 401);
    assert_eq!(curl(&["--cacert", ca, "-u", "node:wrong", &readyz]).0, 401);
    assert_eq!(curl(&["--cacert", ca, "-u", "other:x", &readyz]).0, 401);
    assert_eq!(curl(&["--cacert", ca, "-u", &node, &readyz]).0, 503);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        curl(&["--cacert", ca, "-u", &node, &readyz]),
        (200, "ok".into())
    );
    assert_eq!(
        curl(&["--cacert", ca, "-u", &server, &readyz]),
        (200, "ok".into())
    );
    assert_eq!(
        curl(&["--cacert", ca, &format!("{}/nothing", s.url())]).0,
        404
    );
    let log = s.drain_log();
    assert!(
        !log.contains(&s.password()),
        "server log leaks the password"
    );
    drop(s);
    // A restart keeps the CA and the password, so issued tokens stay valid.
    let s2 = Server::start(d.path(), 0);
    assert_eq!(s2.token(), token);
    // ... and its new serving certificate still chains to the pinned CA.
    assert_eq!(
        curl(&["--cacert", ca, &format!("{}/ping", s2.url())]),
        (200, "pong".into())
    );
}

#[test]
fn agent_joins_and_checks_images() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), 0);
    let a = agent_root(&s, &s.token());
    let images = a.path().join("var/lib/rancher/rke2/agent/images");
    std::fs::create_dir_all(&images).unwrap();
    let store = a.path().join("store/rke2-images.linux-amd64.tar.zst");
    write(&store, "pretend image tarball");
    std::os::unix::fs::symlink(&store, images.join("rke2-images.linux-amd64.tar.zst")).unwrap();
    let o = agent(a.path(), 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains(&s.password()),
        "agent log leaks the token: {err}"
    );
    let hash = hex::encode(Sha256::digest(std::fs::read(s.ca_file()).unwrap()));
    assert!(err.contains(&format!("sha256 {hash}")), "{err}");
    assert!(err.contains("rke2-images.linux-amd64.tar.zst"), "{err}");
    let joined =
        std::fs::read_to_string(a.path().join("var/lib/rancher/rke2/agent/joined")).unwrap();
    assert!(
        joined.contains(&format!("server={}\n", s.url())),
        "{joined}"
    );
    assert!(joined.contains(&format!("ca-sha256={hash}\n")), "{joined}");
    // The server saw an authenticated readyz from the agent.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.drain_log().contains("GET /v1-rke2/readyz -> 200"),
        "server did not log the agent's readyz"
    );

    // A promised image whose link dangles: the agent refuses and names it.
    std::fs::remove_file(&store).unwrap();
    std::fs::remove_file(a.path().join("var/lib/rancher/rke2/agent/joined")).unwrap();
    let o = agent(a.path(), 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("air-gap image") && err.contains("rke2-images.linux-amd64.tar.zst"),
        "{err}"
    );
    assert!(!a.path().join("var/lib/rancher/rke2/agent/joined").exists());
}

#[test]
fn agent_wrong_password_is_token_rejected() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), 0);
    let token = s.token();
    let (prefix, _) = token.rsplit_once(':').unwrap();
    let a = agent_root(&s, &format!("{prefix}:not-the-password"));
    let o = agent(a.path(), 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("token rejected"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "agent logs the token: {err}"
    );
    assert!(!a.path().join("var/lib/rancher/rke2/agent/joined").exists());
}

#[test]
fn agent_refuses_wrong_ca_hash() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), 0);
    let a = agent_root(
        &s,
        &format!("K10{}::server:{}", "0".repeat(64), s.password()),
    );
    let o = agent(a.path(), 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("does not match the token"), "{err}");
    assert!(!a.path().join("var/lib/rancher/rke2/agent/joined").exists());
    // It never sent credentials to the untrusted server.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!s.drain_log().contains("GET /v1-rke2/readyz"));
}

#[test]
fn agent_waits_through_503() {
    let d = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let s = Server::start(d.path(), 3);
    let a = agent_root(&s, &s.token());
    let o = agent(a.path(), 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("HTTP 503"), "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(3));
    assert!(a.path().join("var/lib/rancher/rke2/agent/joined").exists());
}

#[test]
fn agent_gives_up_on_unreachable_server() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = tempfile::tempdir().unwrap();
    write(
        &a.path().join("etc/rancher/rke2/config.yaml"),
        &format!("server: https://127.0.0.1:{port}\ntoken: plain\n"),
    );
    let o = agent(a.path(), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("not ready after 2 s"), "{err}");
    assert!(err.contains("connecting to 127.0.0.1"), "{err}");
}

#[test]
fn server_token_from_config_dropins() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("etc/rancher/rke2/config.yaml"),
        "token: first\nwrite-kubeconfig-mode: \"0644\"\n",
    );
    write(
        &d.path().join("etc/rancher/rke2/config.yaml.d/10-a.yaml"),
        "token: second\n",
    );
    write(
        &d.path().join("etc/rancher/rke2/config.yaml.d/20-b.yaml"),
        "token: third\n",
    );
    write(
        &d.path()
            .join("etc/rancher/rke2/config.yaml.d/30-c.yml.disabled"),
        "token: ignored\n",
    );
    let s = Server::start(d.path(), 0);
    assert!(s.token().ends_with("::server:third"), "{}", s.token());
    // An agent given only the plain password (no CA pin) joins too.
    let a = agent_root(&s, "third");
    let o = agent(a.path(), 30);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("token has no CA hash"), "{err}");
}

#[test]
fn firstboot_preflight_speaks_the_same_protocol() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), 2);
    let backoff = Backoff {
        initial: Duration::from_millis(300),
        max: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
    };
    let token = preflight::Token::parse(&s.token()).unwrap();
    let mut seen = Vec::new();
    let out = preflight::check(&s.url(), &token, Role::Agent, &backoff, &mut |m| {
        seen.push(m.to_string())
    })
    .unwrap();
    assert!(out.ca_verified);
    assert!(
        seen.iter().any(|m| m.contains("HTTP 503")),
        "preflight never saw the start-up 503: {seen:?}"
    );
    let out = preflight::check(&s.url(), &token, Role::Server, &backoff, &mut |_| {}).unwrap();
    assert!(out.ca_verified);
    let bad = preflight::Token::parse(&format!("{}:wrong", s.token().rsplit_once(':').unwrap().0))
        .unwrap();
    match preflight::check(&s.url(), &bad, Role::Agent, &backoff, &mut |_| {}) {
        Err(PreflightError::TokenRejected { status: 401, .. }) => {}
        other => panic!("expected TokenRejected, got {other:?}"),
    }
    let pinned_elsewhere =
        preflight::Token::parse(&format!("K10{}::server:{}", "1".repeat(64), s.password()))
            .unwrap();
    match preflight::check(
        &s.url(),
        &pinned_elsewhere,
        Role::Agent,
        &backoff,
        &mut |_| {},
    ) {
        Err(PreflightError::CaMismatch { .. }) => {}
        other => panic!("expected CaMismatch, got {other:?}"),
    }
}

/// Both sides send `READY=1` over the systemd notify protocol (a datagram on `$NOTIFY_SOCKET`),
/// the server only once it accepts connections, the agent only after it joined.
#[test]
fn notifies_systemd() {
    use std::os::unix::net::UnixDatagram;
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv = || {
        let mut b = [0u8; 4096];
        let n = sock.recv(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let root = d.path().join("server");
    let s = Server::start_with(&root, 0, Some(&sock_path), "127.0.0.1:0");
    let msg = recv();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(
        msg.contains(&format!("serving on 127.0.0.1:{}", s.port)),
        "{msg:?}"
    );
    assert_eq!(
        curl(&["-k", &format!("{}/ping", s.url())]),
        (200, "pong".into())
    );

    let a = agent_root(&s, &s.token());
    let o = Command::new(BIN)
        .args(["agent", "--exit-after-join", "--timeout", "30", "--root"])
        .arg(a.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let msg = recv();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(msg.contains(&format!("joined {}", s.url())), "{msg:?}");

    // A failed join must not report ready.
    let bad = agent_root(&s, "wrong-password");
    let o = Command::new(BIN)
        .args(["agent", "--exit-after-join", "--timeout", "30", "--root"])
        .arg(bad.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .output()
        .unwrap();
    assert!(!o.status.success());
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    assert!(sock.recv(&mut b).is_err(), "failed agent notified systemd");
}

/// Without `--exit-after-join` the agent stays up after joining, as the real one does under its
/// `Restart=always` unit.
#[test]
fn agent_stays_up_after_joining() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), 0);
    let a = agent_root(&s, &s.token());
    let mut child = Command::new(BIN)
        .args(["agent", "--timeout", "30", "--root"])
        .arg(a.path())
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let joined = a.path().join("var/lib/rancher/rke2/agent/joined");
    let t0 = Instant::now();
    while !joined.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(joined.exists(), "agent did not join");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "agent exited after joining"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// HA: a second server whose config names the first joins it as `server`, adopts the cluster CA
/// from `/v1-rke2/server-bootstrap`, and then serves with it, so the first server's token (which
/// pins that CA) lets an agent join through the second server. Agents may not fetch the CA key.
#[test]
fn second_server_joins_first_and_serves_the_cluster_ca() {
    let d1 = tempfile::tempdir().unwrap();
    let s1 = Server::start(d1.path(), 0);
    let token = s1.token();
    let d2 = tempfile::tempdir().unwrap();
    write(
        &d2.path().join("etc/rancher/rke2/config.yaml"),
        &format!("server: {}\ntoken: {token}\n", s1.url()),
    );
    let s2 = Server::start(d2.path(), 0);
    assert_eq!(
        std::fs::read(s1.ca_file()).unwrap(),
        std::fs::read(s2.ca_file()).unwrap(),
        "the joining server must serve the cluster CA"
    );
    assert_eq!(s2.token(), token);
    let joined =
        std::fs::read_to_string(d2.path().join("var/lib/rancher/rke2/server/joined")).unwrap();
    assert!(joined.contains(&format!("server={}", s1.url())), "{joined}");
    // Independent client: curl trusting only the cluster CA accepts the second server.
    let (st, body) = curl(&[
        "--cacert",
        s1.ca_file().to_str().unwrap(),
        &format!("{}/ping", s2.url()),
    ]);
    assert_eq!((st, body.as_str()), (200, "pong"));
    let a = agent_root(&s2, &token);
    let o = agent(a.path(), 30);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The CA key is for servers only.
    let pw = s1.password();
    let (st, _) = curl(&[
        "-k",
        "-u",
        &format!("node:{pw}"),
        &format!("{}/v1-rke2/server-bootstrap", s1.url()),
    ]);
    assert_eq!(st, 403);
    let (st, _) = curl(&["-k", &format!("{}/v1-rke2/server-bootstrap", s1.url())]);
    assert_eq!(st, 401);
    // A second server with a wrong password is refused and does not start.
    let d3 = tempfile::tempdir().unwrap();
    write(
        &d3.path().join("etc/rancher/rke2/config.yaml"),
        &format!(
            "server: {}\ntoken: {}:wrong\n",
            s1.url(),
            token.rsplit_once(':').unwrap().0
        ),
    );
    let o = Command::new(BIN)
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--timeout",
            "10",
            "--root",
        ])
        .arg(d3.path())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("token rejected") && err.contains("as user server"),
        "{err}"
    );
    assert!(!d3.path().join("var/lib/rancher/rke2/server/token").exists());
}
