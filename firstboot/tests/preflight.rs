//! Join preflight against a local RKE2-like supervisor (rustls, certificates from rcgen) on
//! 127.0.0.1.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::Fixed;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rke2_firstboot::agent::{self, RunEnv, RunOutcome};
use rke2_firstboot::atomic::Root;
use rke2_firstboot::dialects::native::Role;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::preflight::{check, Backoff, PreflightError, Token};
use rke2_firstboot::sources::Source;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
    }
}

struct Server {
    port: u16,
    ready_calls: Arc<AtomicUsize>,
}

/// A supervisor: `/cacerts` serves `served_ca`'s PEM; the TLS certificate is signed by
/// `signing_ca`; `/v1-rke2/readyz` wants basic auth `user:password` and answers 503 the first
/// `not_ready` times.
fn server(
    served_ca: &Ca,
    signing_ca: &Ca,
    user: &'static str,
    password: &'static str,
    not_ready: usize,
) -> Server {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &signing_ca.issuer).unwrap();
    let chain = vec![cert.der().clone(), signing_ca.issuer.der().clone()];
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let cfg = Arc::new(cfg);
    let cacerts = served_ca.issuer.pem().into_bytes();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ready_calls = Arc::new(AtomicUsize::new(0));
    let calls = ready_calls.clone();
    let want_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(sc) = rustls::ServerConnection::new(cfg.clone()) else {
                continue;
            };
            let mut s = rustls::StreamOwned::new(sc, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let auth = text
                .lines()
                .find_map(|l| l.strip_prefix("Authorization: "))
                .map(|a| a.trim().to_string());
            let (status, body): (&str, Vec<u8>) = match path.as_str() {
                "/cacerts" => ("200 OK", cacerts.clone()),
                "/ping" => ("200 OK", b"pong".to_vec()),
                "/v1-rke2/readyz" if auth.as_deref() != Some(want_auth.as_str()) => {
                    ("401 Unauthorized", b"Unauthorized".to_vec())
                }
                "/v1-rke2/readyz" => {
                    if calls.fetch_add(1, Ordering::SeqCst) < not_ready {
                        ("503 Service Unavailable", b"etcd not ready".to_vec())
                    } else {
                        ("200 OK", b"ok".to_vec())
                    }
                }
                _ => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    Server { port, ready_calls }
}

fn token_for(ca: &Ca, password: &str) -> String {
    format!(
        "K10{}::server:{password}",
        hex::encode(Sha256::digest(ca.issuer.pem().as_bytes()))
    )
}

fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        deadline: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    }
}

fn url(s: &Server) -> String {
    format!("https://127.0.0.1:{}", s.port)
}

#[test]
fn right_ca_and_token_proceeds() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "node", "s3cret", 0);
    let t = Token::parse(&token_for(&a, "s3cret")).unwrap();
    let mut log = Vec::new();
    let o = check(&url(&s), &t, Role::Agent, &quick(), &mut |m| {
        log.push(m.to_string())
    })
    .unwrap();
    assert!(o.ca_verified);
    assert_eq!(s.ready_calls.load(Ordering::SeqCst), 1);
    assert!(log.iter().all(|l| !l.contains("s3cret")), "{log:?}");
}

#[test]
fn wrong_ca_refuses() {
    let real = ca("rke2-server-ca");
    let other = ca("attacker-ca");
    let s = server(&other, &other, "node", "s3cret", 0);
    let t = Token::parse(&token_for(&real, "s3cret")).unwrap();
    let e = check(&url(&s), &t, Role::Agent, &quick(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, PreflightError::CaMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("server CA does not match the token — possible interception"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"));
    // Never got as far as sending the credentials.
    assert_eq!(s.ready_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn server_certificate_not_from_served_ca_is_not_trusted() {
    // /cacerts returns the pinned CA, but the TLS certificate comes from another CA (a proxy
    // relaying /cacerts): the verified phase must never accept it.
    let real = ca("rke2-server-ca");
    let other = ca("proxy-ca");
    let s = server(&real, &other, "node", "s3cret", 0);
    let t = Token::parse(&token_for(&real, "s3cret")).unwrap();
    let e = check(&url(&s), &t, Role::Agent, &quick(), &mut |_| {}).unwrap_err();
    match &e {
        PreflightError::Timeout { last, .. } => assert!(last.contains("certificate"), "{last}"),
        other => panic!("expected a timeout naming the certificate problem, got {other}"),
    }
    assert_eq!(s.ready_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn wrong_password_is_token_rejected() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "server", "right", 0);
    let t = Token::parse(&token_for(&a, "wrong-password")).unwrap();
    let e = check(&url(&s), &t, Role::Server, &quick(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            PreflightError::TokenRejected {
                status: 401,
                user: "server",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("token rejected"));
    assert!(!e.to_string().contains("wrong-password"));
}

#[test]
fn agents_authenticate_as_node_servers_as_server() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "server", "pw", 0);
    let t = Token::parse(&token_for(&a, "pw")).unwrap();
    assert!(matches!(
        check(&url(&s), &t, Role::Agent, &quick(), &mut |_| {}),
        Err(PreflightError::TokenRejected { user: "node", .. })
    ));
    check(&url(&s), &t, Role::Server, &quick(), &mut |_| {}).unwrap();
}

#[test]
fn waits_through_503_until_ok() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "node", "pw", 3);
    let t = Token::parse(&token_for(&a, "pw")).unwrap();
    let mut log = Vec::new();
    check(&url(&s), &t, Role::Agent, &quick(), &mut |m| {
        log.push(m.to_string())
    })
    .unwrap();
    assert_eq!(s.ready_calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        log.iter().filter(|l| l.contains("HTTP 503")).count(),
        3,
        "{log:?}"
    );
}

#[test]
fn unreachable_times_out_saying_what_was_tried() {
    // A port nobody listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Token::parse(&format!("K10{}::node:x", "0".repeat(64))).unwrap();
    let mut b = quick();
    b.deadline = Duration::from_millis(300);
    let e = check(
        &format!("https://127.0.0.1:{port}"),
        &t,
        Role::Agent,
        &b,
        &mut |_| {},
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, PreflightError::Timeout { attempts, .. } if attempts >= 2),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("connect"),
        "{msg}"
    );
}

fn agent_config(port: u16, token: &str) -> Vec<u8> {
    format!(
        "apiVersion: rke2-image/v1\nkind: NodeConfig\nhostname: w1\nrole: agent\ncluster:\n  server: 127.0.0.1:{port}\n  token: \"{token}\"\n"
    )
    .into_bytes()
}

#[test]
fn run_joins_and_enables_agent_after_preflight() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "node", "pw", 1);
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    let env = RunEnv {
        root: t.path().to_path_buf(),
        sources: vec![Box::new(Fixed(agent_config(s.port, &token_for(&a, "pw"))))],
        identity: Identity::default(),
        preflight_backoff: Some(quick()),
        network_apply: None,
        pause_before: None,
        relabel: None,
        live_cmdline: None,
    };
    let mut log = Vec::new();
    let out = agent::run(&env, &mut |m| log.push(m.to_string())).unwrap();
    assert_eq!(
        out,
        RunOutcome::Configured {
            unit: Some("rke2-agent.service"),
            also_start: vec![]
        }
    );
    assert!(t
        .path()
        .join("etc/systemd/system/multi-user.target.wants/rke2-agent.service")
        .symlink_metadata()
        .is_ok());
    assert!(t.path().join("var/lib/rke2-firstboot/done").exists());
    assert!(log.iter().any(|l| l.contains("join preflight passed")));
    assert!(log.iter().all(|l| !l.contains("::server:pw")), "{log:?}");
    // Second run: stamp present, nothing to do.
    assert_eq!(
        agent::run(&env, &mut |_| {}).unwrap(),
        RunOutcome::AlreadyDone
    );
}

#[test]
fn failed_run_enables_nothing_and_says_why() {
    let a = ca("rke2-server-ca");
    let s = server(&a, &a, "node", "pw", 0);
    let t = tempfile::tempdir().unwrap();
    common::seed(t.path());
    // A stale link from an earlier attempt must not survive a failure either.
    let wants = t.path().join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/local/lib/systemd/system/rke2-server.service",
        wants.join("rke2-server.service"),
    )
    .unwrap();
    let env = RunEnv {
        root: t.path().to_path_buf(),
        sources: vec![Box::new(Fixed(agent_config(
            s.port,
            &token_for(&a, "bad-pw"),
        )))],
        identity: Identity::default(),
        preflight_backoff: Some(quick()),
        network_apply: None,
        pause_before: None,
        relabel: None,
        live_cmdline: None,
    };
    let e = agent::run(&env, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("token rejected"), "{e}");
    assert_eq!(std::fs::read_dir(&wants).unwrap().count(), 0);
    assert!(!t.path().join("var/lib/rke2-firstboot/done").exists());
    let (ok, status) = agent::status(&Root::new(t.path())).unwrap();
    assert!(!ok);
    assert!(
        status.contains("token rejected") && !status.contains("bad-pw"),
        "{status}"
    );
}

#[test]
fn config_url_over_https_is_verified_against_the_image_bundle() {
    use rke2_firstboot::sources::cmdline_url::CmdlineUrl;
    let a = ca("config-server-ca");
    let s = server(&a, &a, "node", "pw", 0);
    let fetch = |bundle: Vec<u8>| {
        CmdlineUrl {
            cmdline: format!("rke2.config.url=https://127.0.0.1:{}/cacerts", s.port),
            identity: Identity::default(),
            ca_bundle: Some(bundle),
            backoff: Backoff {
                deadline: Duration::from_millis(300),
                ..quick()
            },
        }
        .fetch()
    };
    // Trusted: the body arrives (here the server's /cacerts stands in for a config file).
    let f = fetch(a.issuer.pem().into_bytes()).unwrap().unwrap();
    assert_eq!(f.bytes, a.issuer.pem().into_bytes());
    // Not trusted: retried until the deadline, naming the certificate problem.
    let e = fetch(ca("other").issuer.pem().into_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
}
