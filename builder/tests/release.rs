//! `release pull/import/list` and `rke2: {version: ...}` resolution against a release generated
//! by rke2-testsupport around the stand-in rke2 (a test double), served over HTTP on 127.0.0.1
//! by a small server here (with knobs to tamper with, cut, or fail a file) and optionally
//! through a small forwarding proxy. `sha256sum --check` is the outside oracle for the cache.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rke2_image::definition::Definition;
use rke2_image::payload::{self, Options};
use rke2_image::release::{self, http, pull, Cache, Fetch, ReleaseError};
use rke2_image::tree::Tree;
use rke2_testsupport::fixture::{self, FixtureOptions};

const VERSION: &str = "v1.31.5+rke2r1";
const BUNDLE: &str = "rke2.linux-amd64.tar.gz";
const CORE: &str = "rke2-images-core.linux-amd64.tar.zst";

/// One generated release shared by every test (generating it costs a second or two).
fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap().keep();
        rke2_testsupport::scratch::remove_at_exit(&d);
        let bin = rke2_testsupport::stand_in_binary().unwrap();
        fixture::write_release(&d, &bin, &FixtureOptions::new(VERSION)).unwrap();
        d
    })
}

#[derive(Default)]
struct Knobs {
    /// Files served with their last byte flipped.
    tamper: BTreeSet<String>,
    /// Files whose next response announces the full length but stops after this many bytes.
    cut_once: BTreeMap<String, usize>,
    /// Statuses answered (one per request) before a file is served normally.
    statuses: BTreeMap<String, VecDeque<u16>>,
    /// (file, Range header) of every request.
    log: Vec<(String, Option<String>)>,
}

struct Server {
    base: String,
    knobs: Arc<Mutex<Knobs>>,
}

fn read_head(s: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if s.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        lines.push(l);
    }
    lines
}

fn serve(stream: TcpStream, root: &Path, knobs: &Mutex<Knobs>) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let head = read_head(&mut r);
    respond(&head, stream, root, knobs);
}

/// The same over TLS.
fn serve_tls(stream: TcpStream, root: &Path, knobs: &Mutex<Knobs>, cfg: Arc<rustls::ServerConfig>) {
    let conn = rustls::ServerConnection::new(cfg).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    // Requests are one GET head and nothing after it, so a small reader loses nothing.
    let head = read_head(&mut BufReader::with_capacity(1, &mut tls));
    respond(&head, &mut tls, root, knobs);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn respond(head: &[String], mut w: impl Write, root: &Path, knobs: &Mutex<Knobs>) {
    let Some(target) = head.first().and_then(|l| l.split_whitespace().nth(1)) else {
        return;
    };
    let range = head
        .iter()
        .find_map(|h| h.strip_prefix("Range: bytes="))
        .map(|v| v.trim_end_matches('-').to_string());
    let prefix = format!("/{}/", VERSION.replace('+', "%2B"));
    let name = target.strip_prefix(&prefix).unwrap_or("").to_string();
    let (status, cut, tamper) = {
        let mut k = knobs.lock().unwrap();
        k.log.push((name.clone(), range.clone()));
        let status = k.statuses.get_mut(&name).and_then(|q| q.pop_front());
        (status, k.cut_once.remove(&name), k.tamper.contains(&name))
    };
    let data = fs::read(root.join(&name)).ok().filter(|_| !name.is_empty());
    let (status, data) = match (status, data) {
        (Some(s), _) => (s, None),
        (None, None) => (404, None),
        (None, Some(d)) => (200, Some(d)),
    };
    let Some(mut data) = data else {
        let body = format!("status {status}\n");
        let _ = write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    };
    if tamper {
        let last = data.len() - 1;
        data[last] ^= 1;
    }
    let len = data.len();
    let (status_line, from) = match range.and_then(|r| r.parse::<usize>().ok()) {
        Some(n) if n < len => (
            format!(
                "206 Partial Content\r\nContent-Range: bytes {n}-{}/{len}",
                len - 1
            ),
            n,
        ),
        _ => ("200 OK".to_string(), 0),
    };
    let body = &data[from..];
    let _ = write!(
        w,
        "HTTP/1.1 {status_line}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(&body[..cut.unwrap_or(body.len()).min(body.len())]);
}

impl Server {
    /// An HTTPS server whose certificate (for 127.0.0.1) is signed by a CA written to `ca_pem`.
    fn start_tls(root: &Path, ca_pem: &Path) -> Server {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        fs::write(ca_pem, ca.pem()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
        let cfg = Arc::new(cfg);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("https://{}", l.local_addr().unwrap());
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let k = knobs.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (k, root, cfg) = (k.clone(), root.clone(), cfg.clone());
                std::thread::spawn(move || serve_tls(s, &root, &k, cfg));
            }
        });
        Server { base, knobs }
    }

    fn start(root: &Path) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let knobs = Arc::new(Mutex::new(Knobs::default()));
        let k = knobs.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (k, root) = (k.clone(), root.clone());
                std::thread::spawn(move || serve(s, &root, &k));
            }
        });
        Server { base, knobs }
    }

    fn requests(&self, name: &str) -> Vec<Option<String>> {
        let k = self.knobs.lock().unwrap();
        k.log
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A forwarding proxy: absolute-form `GET http://...` requests and `CONNECT` tunnels.
fn start_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let seen = s2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let head = read_head(&mut r);
                let Some(first) = head.first().cloned() else {
                    return;
                };
                seen.lock().unwrap().push(first.clone());
                let mut parts = first.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let mut client = c;
                if method == "CONNECT" {
                    let up = TcpStream::connect(target).unwrap();
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .unwrap();
                    let (mut a, mut b) = (up.try_clone().unwrap(), client.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut b, &mut a);
                    });
                    let (mut up, mut client) = (up, client);
                    let _ = std::io::copy(&mut up, &mut client);
                    return;
                }
                let rest = target.strip_prefix("http://").unwrap();
                let (host, path) = rest.split_at(rest.find('/').unwrap());
                let mut up = TcpStream::connect(host).unwrap();
                let mut req = format!("{method} {path} HTTP/1.1\r\n");
                for h in &head[1..] {
                    req.push_str(&format!("{h}\r\n"));
                }
                req.push_str("\r\n");
                up.write_all(req.as_bytes()).unwrap();
                let _ = std::io::copy(&mut up, &mut client);
            });
        }
    });
    (addr, seen)
}

fn opts(base: &str, parts: &[&str], retries: u32) -> pull::PullOptions {
    pull::PullOptions {
        base_url: base.to_string(),
        parts: parts.iter().map(|s| s.to_string()).collect(),
        retries,
        backoff: Duration::from_millis(10),
        client: Arc::new(http::Client::new(http::Proxies::default(), None)),
    }
}

fn pull_log(
    cache: &Cache,
    o: &pull::PullOptions,
) -> (Result<release::CachedRelease, ReleaseError>, Vec<String>) {
    let mut log = Vec::new();
    let r = pull::pull(cache, VERSION, o, &mut |e| {
        if !e.is_progress() {
            log.push(e.to_string())
        }
    });
    (r, log)
}

fn expected_sha(name: &str) -> String {
    let text = fs::read_to_string(fixture_dir().join("sha256sum-amd64.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_suffix(&format!("  {name}")))
        .unwrap()
        .to_string()
}

/// `sha256sum --check` over the files the cached release directory has.
fn sha256sum_check(dir: &Path) -> String {
    let out = Command::new("sha256sum")
        .args([
            "--check",
            "--ignore-missing",
            "--strict",
            "sha256sum-amd64.txt",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "sha256sum --check: {text}");
    text
}

fn nothing_cached(cache: &Cache, name: &str) {
    assert!(cache.list().unwrap().is_empty(), "a release was registered");
    let sha = expected_sha(name);
    assert!(!cache.blob(&sha).exists(), "{name} has a blob");
}

#[test]
fn pull_verifies_and_caches_the_default_parts() {
    let srv = Server::start(fixture_dir());
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let (r, log) = pull_log(&cache, &opts(&srv.base, release::DEFAULT_PARTS, 0));
    let r = r.unwrap();
    let names: Vec<&str> = r.files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "rke2-images-canal.linux-amd64.tar.zst",
            "rke2-images-canal.linux-amd64.txt",
            CORE,
            "rke2-images-core.linux-amd64.txt",
            BUNDLE
        ]
    );
    let checked = sha256sum_check(&r.dir);
    assert_eq!(checked.matches(": OK").count(), 5, "{checked}");
    assert_eq!(
        r.origin_display(VERSION),
        format!("{}/v1.31.5%2Brke2r1", srv.base)
    );
    assert!(
        log.iter()
            .any(|l| l.contains(BUNDLE) && l.contains("sha256 verified")),
        "{log:?}"
    );
    // A second pull downloads nothing but the checksum list.
    let (r2, log2) = pull_log(&cache, &opts(&srv.base, release::DEFAULT_PARTS, 0));
    r2.unwrap();
    assert_eq!(srv.requests(BUNDLE).len(), 1);
    assert!(
        log2.iter().all(|l| l.ends_with("already cached")),
        "{log2:?}"
    );
    assert_eq!(cache.list().unwrap().len(), 1);
}

#[test]
fn tampered_file_is_named_and_nothing_is_cached() {
    let srv = Server::start(fixture_dir());
    srv.knobs.lock().unwrap().tamper.insert(CORE.into());
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let (r, _) = pull_log(&cache, &opts(&srv.base, &["core"], 2));
    let e = r.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ReleaseError::Mismatch { .. }), "{msg}");
    let sha = expected_sha(CORE);
    assert!(msg.contains(CORE) && msg.contains(&sha), "{msg}");
    assert!(
        msg.contains(&format!("{}/v1.31.5%2Brke2r1/{CORE}", srv.base)),
        "{msg}"
    );
    // Not retried: the same bytes would come again.
    assert_eq!(srv.requests(CORE).len(), 1);
    nothing_cached(&cache, CORE);
    assert!(!cache.partial(&sha).exists());
}

#[test]
fn truncated_transfer_is_resumed_by_the_next_pull() {
    let srv = Server::start(fixture_dir());
    srv.knobs
        .lock()
        .unwrap()
        .cut_once
        .insert(BUNDLE.into(), 100_000);
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let (r, _) = pull_log(&cache, &opts(&srv.base, &[], 0));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(BUNDLE) && msg.contains("after 100000 of"),
        "{msg}"
    );
    nothing_cached(&cache, BUNDLE);
    let part = cache.partial(&expected_sha(BUNDLE));
    assert_eq!(fs::metadata(&part).unwrap().len(), 100_000);

    let (r, log) = pull_log(&cache, &opts(&srv.base, &[], 0));
    let r = r.unwrap();
    assert_eq!(srv.requests(BUNDLE), [None, Some("100000".to_string())]);
    assert!(
        log.iter().any(|l| l.contains("resumed at byte 100000")),
        "{log:?}"
    );
    assert!(!part.exists());
    sha256sum_check(&r.dir);
}

#[test]
fn cut_transfer_is_retried_within_one_pull() {
    let srv = Server::start(fixture_dir());
    srv.knobs
        .lock()
        .unwrap()
        .cut_once
        .insert(BUNDLE.into(), 4096);
    let c = tempfile::tempdir().unwrap();
    let (r, log) = pull_log(&Cache::new(c.path()), &opts(&srv.base, &[], 1));
    sha256sum_check(&r.unwrap().dir);
    assert!(
        log.iter().any(|l| l.contains("attempt 1 failed")),
        "{log:?}"
    );
    assert_eq!(srv.requests(BUNDLE), [None, Some("4096".to_string())]);
}

#[test]
fn http_404_fails_at_once_and_500_is_retried() {
    let srv = Server::start(fixture_dir());
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let list = "rke2-images-canal.linux-amd64.txt";
    srv.knobs
        .lock()
        .unwrap()
        .statuses
        .insert(list.into(), VecDeque::from([404]));
    let (r, _) = pull_log(&cache, &opts(&srv.base, &["canal"], 3));
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains(list) && msg.contains("HTTP 404"), "{msg}");
    assert_eq!(srv.requests(list).len(), 1);
    assert!(cache.list().unwrap().is_empty());

    // 500 twice, then served: two retries make it.
    srv.knobs
        .lock()
        .unwrap()
        .statuses
        .insert(list.into(), VecDeque::from([500, 500]));
    let (r, log) = pull_log(&cache, &opts(&srv.base, &["canal"], 2));
    r.unwrap();
    assert_eq!(
        log.iter().filter(|l| l.contains("HTTP 500")).count(),
        2,
        "{log:?}"
    );

    // 500 more often than the retries allow: fails, naming the file and the status.
    let c2 = tempfile::tempdir().unwrap();
    srv.knobs
        .lock()
        .unwrap()
        .statuses
        .insert(BUNDLE.into(), VecDeque::from([500, 500, 500]));
    let (r, _) = pull_log(&Cache::new(c2.path()), &opts(&srv.base, &[], 1));
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains(BUNDLE) && msg.contains("HTTP 500"), "{msg}");
}

#[test]
fn parts_select_what_is_pulled() {
    let srv = Server::start(fixture_dir());
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let parts = release::parse_parts(&["cilium,multus".to_string()]).unwrap();
    let mut o = opts(&srv.base, &[], 0);
    o.parts = parts;
    let (r, _) = pull_log(&cache, &o);
    let r = r.unwrap();
    assert!(r
        .files
        .contains_key("rke2-images-cilium.linux-amd64.tar.zst"));
    assert!(r.files.contains_key("rke2-images-multus.linux-amd64.txt"));
    assert!(!r.files.contains_key(CORE));
    assert!(srv.requests(CORE).is_empty());
    assert_eq!(r.missing(&["core".into()]).unwrap().len(), 2);
    // Pulling core later adds to the same release directory.
    let (r, _) = pull_log(&cache, &opts(&srv.base, &["core"], 0));
    assert_eq!(r.unwrap().files.len(), 7);
    let e = release::parse_parts(&["core,bogus".to_string()]).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    assert_eq!(
        release::parse_parts(&["all".into()]).unwrap().len(),
        payload::PARTS.len()
    );
}

#[test]
fn pull_through_a_proxy_and_no_proxy() {
    let srv = Server::start(fixture_dir());
    let (proxy, seen) = start_proxy();
    let c = tempfile::tempdir().unwrap();
    let vars = |no: &'static str| {
        let proxy = proxy.clone();
        move |n: &str| match n {
            "HTTP_PROXY" => Some(proxy.clone()),
            "NO_PROXY" if !no.is_empty() => Some(no.to_string()),
            _ => None,
        }
    };
    let mut o = opts(&srv.base, &["core"], 0);
    o.client = Arc::new(http::Client::new(http::Proxies::from_vars(vars("")), None));
    let (r, _) = pull_log(&Cache::new(c.path()), &o);
    sha256sum_check(&r.unwrap().dir);
    let through = seen.lock().unwrap().clone();
    assert!(
        through
            .iter()
            .any(|l| l.starts_with(&format!("GET {}/v1.31.5%2Brke2r1/{CORE}", srv.base))),
        "{through:?}"
    );
    // NO_PROXY naming the host goes direct.
    let n = seen.lock().unwrap().len();
    let c2 = tempfile::tempdir().unwrap();
    o.client = Arc::new(http::Client::new(
        http::Proxies::from_vars(vars("localhost,127.0.0.1")),
        None,
    ));
    let (r, _) = pull_log(&Cache::new(c2.path()), &o);
    r.unwrap();
    assert_eq!(seen.lock().unwrap().len(), n);
}

#[test]
fn import_a_directory_and_refuse_a_bad_checksum() {
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let r = release::import::import(&cache, fixture_dir(), None, &mut |_| {}).unwrap();
    assert_eq!(r.version, VERSION);
    assert_eq!(r.origin_display(VERSION), format!("import:{VERSION}"));
    let n = fs::read_to_string(fixture_dir().join("sha256sum-amd64.txt"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(r.files.len(), n);
    sha256sum_check(&r.dir);

    // A carried directory with one corrupted file: named, nothing imported.
    let bad = tempfile::tempdir().unwrap();
    for name in [
        "sha256sum-amd64.txt",
        BUNDLE,
        CORE,
        "rke2-images-core.linux-amd64.txt",
    ] {
        fs::copy(fixture_dir().join(name), bad.path().join(name)).unwrap();
    }
    let mut data = fs::read(bad.path().join(CORE)).unwrap();
    data[100] ^= 0xff;
    fs::write(bad.path().join(CORE), data).unwrap();
    let c2 = tempfile::tempdir().unwrap();
    let cache2 = Cache::new(c2.path());
    let e = release::import::import(&cache2, bad.path(), None, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(CORE) && msg.contains(&expected_sha(CORE)),
        "{msg}"
    );
    nothing_cached(&cache2, CORE);
}

fn definition(dir: &Path, rke2: &str) -> Definition {
    fs::write(dir.join("base.tar"), b"").unwrap();
    let text = format!(
        "apiVersion: rke2-image.io/v1alpha1\nkind: Image\nname: node\nversion: 1.0.0\nbase:\n  archive: base.tar\nrke2:\n{rke2}"
    );
    let file = dir.join("node.yaml");
    fs::write(&file, text).unwrap();
    Definition::load(&file).unwrap()
}

#[test]
fn version_resolves_offline_from_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let mut def = definition(d.path(), &format!("  version: {VERSION}\n"));
    let c = tempfile::tempdir().unwrap();
    let cache = Cache::new(c.path());
    let spec = def.rke2.as_mut().unwrap();
    assert!(spec.from_release_cache);
    let e = release::resolve(spec, &cache, Fetch::Offline, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(VERSION)
            && msg.contains("release import DIR")
            && msg.contains("release pull v1.31.5+rke2r1 --parts core,canal"),
        "{msg}"
    );

    // Only cilium cached: still missing, and the message names the files.
    let srv = Server::start(fixture_dir());
    let (r, _) = pull_log(&cache, &opts(&srv.base, &["cilium"], 0));
    r.unwrap();
    let msg = release::resolve(spec, &cache, Fetch::Offline, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("missing: {CORE}")), "{msg}");

    release::import::import(&cache, fixture_dir(), None, &mut |_| {}).unwrap();
    release::resolve(spec, &cache, Fetch::Offline, &mut |_| {}).unwrap();
    let mut tree = Tree::new(0);
    let o = Options {
        fips: true,
        cis: false,
        selinux: false,
        allow_non_fips_supervisor: false,
        epoch: 1_700_000_000,
    };
    let report = payload::apply(&mut tree, spec, &o, &mut |_| {}).unwrap();
    assert_eq!(report.version, VERSION);
    // The manifest names where the release came from, never a host path.
    // (the import re-verified the pulled cilium files too, so the origin is the import)
    assert_eq!(spec.origin, format!("import:{VERSION}"));
    let paths: Vec<&str> = report.inputs.iter().map(|i| i.name.as_str()).collect();
    assert!(paths.contains(&BUNDLE), "{paths:?}");
    assert!(
        paths
            .iter()
            .all(|p| !p.contains(&c.path().display().to_string())),
        "{paths:?}"
    );
}

#[test]
fn build_offline_without_the_release_says_how_to_import_it() {
    let d = tempfile::tempdir().unwrap();
    definition(d.path(), &format!("  version: {VERSION}\n"));
    let c = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(["build", "--offline", "--cache-dir"])
        .arg(c.path())
        .arg(d.path().join("node.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node.yaml: rke2.version") && err.contains("rke2-image release import DIR"),
        "{err}"
    );
    // `release list` on an empty cache prints nothing and succeeds.
    let out = Command::new(env!("CARGO_BIN_EXE_rke2-image"))
        .args(["release", "list", "--cache-dir"])
        .arg(c.path())
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
}

#[test]
fn shipped_definitions_are_rke2_nodes_from_the_release_cache() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    let mut names = Vec::new();
    for e in fs::read_dir(&images).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let def = Definition::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let spec = def
                .rke2
                .as_ref()
                .unwrap_or_else(|| panic!("{}: no rke2", p.display()));
            assert!(spec.from_release_cache, "{}", p.display());
            release::check_version(&spec.version).unwrap();
            assert!(spec.images.starts_with(&["core".into(), "canal".into()]));
            assert!(def.fips, "{}", p.display());
            // One explaining comment line first.
            let text = fs::read_to_string(&p).unwrap();
            assert!(text.starts_with("# "), "{}", p.display());
            names.push(p.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "airgap-all.yaml",
            "cis.yaml",
            "debug-permissive.yaml",
            "default.yaml"
        ]
    );
}

#[test]
fn https_is_verified_against_the_ca_bundle_directly_and_through_connect() {
    let t = tempfile::tempdir().unwrap();
    let ca = t.path().join("ca.pem");
    let srv = Server::start_tls(fixture_dir(), &ca);
    let client = |proxies: http::Proxies, ca: &Path| {
        Arc::new(http::Client::new(proxies, Some(ca.to_path_buf())))
    };
    let mut o = opts(&srv.base, &["core"], 0);
    o.client = client(http::Proxies::default(), &ca);
    let c = tempfile::tempdir().unwrap();
    let (r, _) = pull_log(&Cache::new(c.path()), &o);
    sha256sum_check(&r.unwrap().dir);

    // A bundle without the server's CA: refused, nothing cached.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    let _unused = Server::start_tls(fixture_dir(), &other_ca);
    o.client = client(http::Proxies::default(), &other_ca);
    let c2 = tempfile::tempdir().unwrap();
    let (r, _) = pull_log(&Cache::new(c2.path()), &o);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("certificate") || msg.contains("UnknownIssuer"),
        "{msg}"
    );
    assert!(Cache::new(c2.path()).list().unwrap().is_empty());

    // HTTPS_PROXY: a CONNECT tunnel, TLS verified end to end.
    let (proxy, seen) = start_proxy();
    let p = proxy.clone();
    o.client = client(
        http::Proxies::from_vars(move |n| (n == "HTTPS_PROXY").then(|| p.clone())),
        &ca,
    );
    let c3 = tempfile::tempdir().unwrap();
    let (r, _) = pull_log(&Cache::new(c3.path()), &o);
    r.unwrap();
    let port = srv.base.rsplit(':').next().unwrap().to_string();
    let through = seen.lock().unwrap().clone();
    assert!(
        through
            .iter()
            .any(|l| l.starts_with(&format!("CONNECT 127.0.0.1:{port} "))),
        "{through:?}"
    );
}

#[test]
fn build_pull_failure_says_how_to_import() {
    let d = tempfile::tempdir().unwrap();
    let mut def = definition(d.path(), &format!("  version: {VERSION}\n"));
    let c = tempfile::tempdir().unwrap();
    // A closed port: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = opts(&format!("http://127.0.0.1:{port}"), &[], 1);
    let spec = def.rke2.as_mut().unwrap();
    let msg = release::resolve(spec, &Cache::new(c.path()), Fetch::Pull(&o), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot connect")
            && msg.contains("release import DIR")
            && msg.contains("--offline"),
        "{msg}"
    );
}
