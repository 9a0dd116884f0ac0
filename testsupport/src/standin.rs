//! `rke2 server` / `rke2 agent` of the stand-in binary: a TEST DOUBLE of the RKE2 supervisor's
//! join protocol on :9345, so image tests can prove two nodes join without a real release.
//!
//! Server: creates a CA and a serving certificate on first start (kept under
//! `server/tls/` so restarts keep the CA the token pins), writes `server/token` as
//! `K10<sha256 of /cacerts>::server:<password>`, and serves over TLS `/cacerts`, `/ping` and
//! `/v1-rke2/readyz` (basic auth as `node` or `server` with the token's password; 503 during a
//! start-up delay). Agent: fetches `/cacerts` unverified, checks the token's hash, then polls
//! readyz verified against that CA, records the join and checks its promised air-gap images.
//! Every path lives under a root so tests can run it in a temporary directory.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rke2_firstboot::http::{self, HttpError, Url};
use rke2_firstboot::preflight::Token;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The supervisor port of RKE2.
pub const PORT: u16 = 9345;
const CONFIG: &str = "etc/rancher/rke2/config.yaml";
const CONFIG_D: &str = "etc/rancher/rke2/config.yaml.d";
const SERVER_DIR: &str = "var/lib/rancher/rke2/server";
const AGENT_DIR: &str = "var/lib/rancher/rke2/agent";

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("usage: {0}")]
    Usage(String),
    #[error("token: {0} (expected K10<sha256 hex>::<user>:<password> or a plain password)")]
    BadToken(String),
    #[error("certificates: {0}")]
    Cert(String),
    #[error("token rejected by {server} (HTTP {status} from /v1-rke2/readyz as user {user})")]
    TokenRejected {
        server: String,
        status: u16,
        user: String,
    },
    #[error(
        "server CA does not match the token — refusing to join ({server}/cacerts has sha256 \
         {got}, the token pins {want})"
    )]
    CaMismatch {
        server: String,
        got: String,
        want: String,
    },
    #[error(
        "{server} not ready after {secs} s ({attempts} attempts); last: {last}. Check that the \
         server runs and port 9345 is reachable"
    )]
    Timeout {
        server: String,
        secs: u64,
        attempts: u32,
        last: String,
    },
    #[error("air-gap image {path}: {msg} (the node was promised this preloaded tarball)")]
    Image { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandinError + '_ {
    move |source| StandinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn log(msg: &str) {
    eprintln!("rke2-standin: {msg}");
}

/// The keys of `config.yaml` the stand-in understands; all other keys are ignored.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub server: Option<String>,
    pub token: Option<String>,
    pub tls_san: Option<Vec<String>>,
    /// Seconds `/v1-rke2/readyz` answers 503 after the server starts (stand-in only).
    pub standin_ready_delay: Option<u64>,
}

impl Config {
    /// `config.yaml`, then `config.yaml.d/*.yaml` in name order; later files win per key.
    pub fn load(root: &Path) -> Result<Config, StandinError> {
        let mut files = vec![root.join(CONFIG)];
        let dir = root.join(CONFIG_D);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut more: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            more.sort();
            files.extend(more);
        }
        let mut cfg = Config::default();
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&f)(e)),
            };
            if text.trim().is_empty() {
                continue;
            }
            let c: Config = serde_saphyr::from_str(&text).map_err(|e| StandinError::Config {
                path: f.clone(),
                msg: format!("{e} (fix the YAML; keys are RKE2 config keys)"),
            })?;
            cfg.server = c.server.or(cfg.server);
            cfg.token = c.token.or(cfg.token);
            cfg.tls_san = c.tls_san.or(cfg.tls_san);
            cfg.standin_ready_delay = c.standin_ready_delay.or(cfg.standin_ready_delay);
        }
        Ok(cfg)
    }
}

/// The join token, parsed exactly as the node agent's preflight parses it (one parser).
fn parse_token(s: &str) -> Result<Token, StandinError> {
    Token::parse(s).map_err(|e| StandinError::BadToken(e.to_string()))
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StandinError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

// ---------------------------------------------------------------------------------------------
// Server

/// Options of `rke2 server`.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub root: PathBuf,
    pub bind: SocketAddr,
    /// Overrides `standin-ready-delay` from the config; default 5 s.
    pub ready_delay: Option<u64>,
    pub tls_san: Vec<String>,
}

struct Tls {
    cacerts: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "rke2-server-ca@standin");
    Ok(p)
}

/// Loads the CA from `server/tls/` (creating it on first start, then kept: the token pins it)
/// and issues a fresh serving certificate for the current addresses, as addresses may change
/// between boots while the CA must not.
fn server_tls(root: &Path, sans: &[String]) -> Result<Tls, StandinError> {
    let dir = root.join(SERVER_DIR).join("tls");
    let ca_path = dir.join("server-ca.crt");
    let ca_key_path = dir.join("server-ca.key");
    let crt_path = dir.join("serving-kube-apiserver.crt");
    let key_path = dir.join("serving-kube-apiserver.key");
    let cerr = |e: rcgen::Error| StandinError::Cert(e.to_string());
    let issuer = if ca_path.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            StandinError::Cert(format!(
                "{}: {e} (remove the server/tls directory to start a new cluster)",
                ca_key_path.display()
            ))
        })?;
        // Same subject and key as the stored CA, so issued certificates chain to it.
        rcgen::Issuer::new(ca_params().map_err(cerr)?, key)
    } else {
        let key = rcgen::KeyPair::generate().map_err(cerr)?;
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params().map_err(cerr)?, key).map_err(cerr)?;
        write_atomic(&ca_key_path, ca.key().serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&ca_path, ca.pem().as_bytes(), 0o644)?;
        log(&format!("created CA {}", ca_path.display()));
        let pem = ca.key().serialize_pem();
        rcgen::Issuer::new(
            ca_params().map_err(cerr)?,
            rcgen::KeyPair::from_pem(&pem).map_err(cerr)?,
        )
    };
    let key = rcgen::KeyPair::generate().map_err(cerr)?;
    let mut p = rcgen::CertificateParams::new(sans.to_vec()).map_err(cerr)?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = p.signed_by(&key, &issuer).map_err(cerr)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&crt_path, cert.pem().as_bytes(), 0o644)?;
    log(&format!("serving certificate for {}", sans.join(",")));
    let cacerts = std::fs::read(&ca_path).map_err(io(&ca_path))?;
    let mut chain = vec![cert.der().clone()];
    for c in CertificateDer::pem_slice_iter(&cacerts) {
        chain.push(c.map_err(|e| StandinError::Cert(format!("{}: {e}", ca_path.display())))?);
    }
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| StandinError::Cert(format!("serving key: {e}")))?;
    Ok(Tls {
        cacerts,
        chain,
        key,
    })
}

/// The machine's own IPv4 (`/proc/net/fib_trie` LOCAL host routes) and IPv6
/// (`/proc/net/if_inet6`) addresses, so agents can verify the server at whichever it uses.
fn local_addresses() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last = None;
        for l in t.lines() {
            let l = l.trim();
            if let Some(ip) = l.strip_prefix("|-- ") {
                last = ip.parse::<Ipv4Addr>().ok();
            } else if l == "/32 host LOCAL" {
                out.extend(last.take().map(|ip| ip.to_string()));
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6") {
        for l in t.lines() {
            let Some(hex) = l.split_whitespace().next() else {
                continue;
            };
            if let Ok(b) = hex::decode(hex) {
                if let Ok(b) = <[u8; 16]>::try_from(b.as_slice()) {
                    let ip = std::net::Ipv6Addr::from(b);
                    // Link-local addresses need a zone and cannot be a certificate SAN usefully.
                    if ip.segments()[0] & 0xffc0 != 0xfe80 {
                        out.push(ip.to_string());
                    }
                }
            }
        }
    }
    out
}

/// A random password for a server without a configured token. Secrets are the one place this
/// tool uses randomness.
fn new_password() -> Result<String, StandinError> {
    let p = Path::new("/dev/urandom");
    let mut b = [0u8; 16];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io(p))?;
    Ok(hex::encode(b))
}

/// A bound, not yet serving supervisor.
pub struct Server {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cacerts: Arc<Vec<u8>>,
    /// `node` then `server` basic-auth header values.
    auth: Arc<Vec<String>>,
    /// The CA certificate and key for joining servers (`/v1-rke2/server-bootstrap`).
    bootstrap: Arc<Vec<u8>>,
    ready_delay: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Prepares certificates and the token file and binds the socket.
    pub fn bind(opts: &ServerOpts) -> Result<Server, StandinError> {
        let cfg = Config::load(&opts.root)?;
        let mut sans = vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ];
        if let Ok(h) = std::fs::read_to_string(opts.root.join("etc/hostname")) {
            let h = h.trim();
            if !h.is_empty() {
                sans.push(h.to_string());
            }
        }
        if !opts.bind.ip().is_unspecified() {
            sans.push(opts.bind.ip().to_string());
        }
        sans.extend(local_addresses());
        sans.extend(cfg.tls_san.clone().unwrap_or_default());
        sans.extend(opts.tls_san.iter().cloned());
        sans.sort();
        sans.dedup();
        let tls = server_tls(&opts.root, &sans)?;
        let ca_key_path = opts.root.join(SERVER_DIR).join("tls/server-ca.key");
        let mut bootstrap = tls.cacerts.clone();
        bootstrap.extend_from_slice(BOOTSTRAP_SEPARATOR.as_bytes());
        bootstrap.extend(std::fs::read(&ca_key_path).map_err(io(&ca_key_path))?);
        let hash = hex::encode(Sha256::digest(&tls.cacerts));
        let token_path = opts.root.join(SERVER_DIR).join("token");
        let password =
            match &cfg.token {
                Some(t) => {
                    let t = parse_token(t)?;
                    if let Some(want) = t.ca_hash.as_ref().filter(|w| **w != hash) {
                        return Err(StandinError::Config {
                            path: opts.root.join(CONFIG),
                            msg: format!(
                            "the configured K10 token pins CA sha256 {want}, but this server's CA \
                             ({}) has {hash}; use a plain password token on the first server",
                            opts.root.join(SERVER_DIR).join("tls/server-ca.crt").display()
                        ),
                        });
                    }
                    t.password().to_string()
                }
                None => match std::fs::read_to_string(&token_path) {
                    Ok(s) => parse_token(&s)?.password().to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_password()?,
                    Err(e) => return Err(io(&token_path)(e)),
                },
            };
        let token = format!("K10{hash}::server:{password}\n");
        write_atomic(&token_path, token.as_bytes(), 0o600)?;
        log(&format!(
            "token written to {} (CA sha256 {hash})",
            token_path.display()
        ));
        let cfg_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StandinError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(tls.chain, tls.key)
        .map_err(|e| StandinError::Cert(e.to_string()))?;
        let listener = TcpListener::bind(opts.bind).map_err(|source| StandinError::Io {
            path: PathBuf::from(format!("bind {}", opts.bind)),
            source,
        })?;
        let auth = ["node", "server"]
            .iter()
            .map(|u| Token::password_only(&password).basic(u))
            .collect();
        Ok(Server {
            listener,
            tls: Arc::new(cfg_tls),
            cacerts: Arc::new(tls.cacerts),
            auth: Arc::new(auth),
            bootstrap: Arc::new(bootstrap),
            ready_delay: Duration::from_secs(
                opts.ready_delay.or(cfg.standin_ready_delay).unwrap_or(5),
            ),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, StandinError> {
        self.listener
            .local_addr()
            .map_err(|source| StandinError::Io {
                path: PathBuf::from("listening socket"),
                source,
            })
    }

    /// Serves forever, one thread per connection; notifies systemd once listening.
    pub fn serve(self) -> Result<(), StandinError> {
        let start = Instant::now();
        log(&format!("listening on {}", self.local_addr()?));
        notify_ready(&format!("serving on {}", self.local_addr()?));
        let delay = self.ready_delay;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            // Tests time "supervisor ready" by this line.
            log("supervisor ready: /v1-rke2/readyz answers ok");
        });
        for conn in self.listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let tls = self.tls.clone();
            let cacerts = self.cacerts.clone();
            let auth = self.auth.clone();
            let bootstrap = self.bootstrap.clone();
            let delay = self.ready_delay;
            std::thread::spawn(move || {
                let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = handle(tcp, tls, &cacerts, &auth, &bootstrap, start, delay) {
                    log(&format!("connection from {peer}: {e}"));
                }
            });
        }
        Ok(())
    }
}

fn handle(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    cacerts: &[u8],
    auth: &[String],
    bootstrap: &[u8],
    start: Instant,
    delay: Duration,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    {
        let mut r = std::io::BufReader::new(&mut s);
        loop {
            let mut line = Vec::new();
            let n = r.by_ref().take(8192).read_until(b'\n', &mut line)?;
            if n == 0 || line == b"\r\n" || line == b"\n" {
                break;
            }
            head.extend_from_slice(&line);
            if head.len() > 32 << 10 {
                return Err(std::io::Error::other("request header too large"));
            }
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let mut req = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        req.next().unwrap_or_default(),
        req.next().unwrap_or_default(),
    );
    let authz = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (status, reason, body): (u16, &str, Vec<u8>) = match (method, path) {
        ("GET", "/cacerts") => (200, "OK", cacerts.to_vec()),
        ("GET", "/ping") => (200, "OK", b"pong".to_vec()),
        ("GET", "/v1-rke2/readyz") => match authz {
            Some(a) if auth.contains(&a) => {
                if start.elapsed() < delay {
                    (503, "Service Unavailable", b"not ready: starting".to_vec())
                } else {
                    (200, "OK", b"ok".to_vec())
                }
            }
            _ => (401, "Unauthorized", b"Unauthorized".to_vec()),
        },
        // Only servers may fetch the cluster CA key.
        ("GET", "/v1-rke2/server-bootstrap") => match authz {
            Some(a) if auth.get(1) == Some(&a) => (200, "OK", bootstrap.to_vec()),
            Some(a) if auth.contains(&a) => (403, "Forbidden", b"Forbidden".to_vec()),
            _ => (401, "Unauthorized", b"Unauthorized".to_vec()),
        },
        ("GET", _) => (404, "Not Found", b"not found".to_vec()),
        _ => (405, "Method Not Allowed", b"method not allowed".to_vec()),
    };
    log(&format!("{method} {path} -> {status}"));
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status == 401 {
        resp.push_str("WWW-Authenticate: Basic realm=\"rke2\"\r\n");
    }
    resp.push_str("\r\n");
    s.write_all(resp.as_bytes())?;
    s.write_all(&body)?;
    s.conn.send_close_notify();
    s.flush()
}

// ---------------------------------------------------------------------------------------------
// Agent

/// Options of `rke2 agent`.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    pub root: PathBuf,
    /// Give up after this long without a successful join.
    pub timeout: Duration,
}

/// What the agent joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub server: String,
    pub ca_sha256: String,
    pub images: Vec<PathBuf>,
}

/// Every entry of `agent/images/` must resolve to a readable, non-empty file.
fn check_images(root: &Path) -> Result<Vec<PathBuf>, StandinError> {
    let dir = root.join(AGENT_DIR).join("images");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log(&format!("no preloaded images ({} absent)", dir.display()));
            return Ok(out);
        }
        Err(e) => return Err(io(&dir)(e)),
    };
    for e in rd {
        out.push(e.map_err(io(&dir))?.path());
    }
    out.sort();
    for p in &out {
        let img = |msg: String| StandinError::Image {
            path: p.clone(),
            msg,
        };
        let mut f = std::fs::File::open(p).map_err(|e| img(format!("cannot open: {e}")))?;
        let len = f.metadata().map_err(|e| img(e.to_string()))?.len();
        let mut b = [0u8; 512];
        let n = f
            .read(&mut b)
            .map_err(|e| img(format!("cannot read: {e}")))?;
        if n == 0 || len == 0 {
            return Err(img("empty".into()));
        }
        log(&format!(
            "preloaded image {} ({len} bytes) readable",
            p.display()
        ));
    }
    Ok(out)
}

/// The server URL from the config as the node agent's HTTP client takes it; RKE2's default
/// supervisor port when the URL names none.
fn parse_server(s: &str) -> Option<Url> {
    let mut url = Url::parse(s).ok().filter(|u| u.https)?;
    let authority = s.strip_prefix("https://")?.split('/').next()?;
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    if !authority[host_end..].contains(':') {
        url.port = PORT;
    }
    Some(url)
}

/// One GET with the node agent's client; connection failures say what was tried.
fn get(
    base: &Url,
    tls: &http::Tls,
    path: &str,
    auth: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let url = Url {
        path: path.to_string(),
        ..base.clone()
    };
    match http::get(&url, tls, auth, Duration::from_secs(10), 1 << 20) {
        Ok(r) => Ok((r.status, r.body)),
        Err(HttpError::Connect { addr, source }) => Err(format!("connecting to {addr}: {source}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A supervisor this node has authenticated to: its address, CA (pinned by the token) and a
/// client verifying against that CA.
struct Joined0 {
    server: String,
    target: Url,
    ca_sha256: String,
    verified: http::Tls,
    auth: String,
}

/// The join protocol both roles share, as RKE2 runs it: fetch `/cacerts` unverified, compare
/// its hash with the token's, then poll `/v1-rke2/readyz` verified against that CA with basic
/// auth as `user` (`node` for agents, `server` for joining servers) until it answers `ok`.
fn join(
    cfg: &Config,
    cfg_path: &Path,
    user: &str,
    timeout: Duration,
) -> Result<Joined0, StandinError> {
    let missing = |k: &str| StandinError::Config {
        path: cfg_path.to_path_buf(),
        msg: format!("no `{k}` key (joining needs `server: https://<host>:9345` and `token`)"),
    };
    let server = cfg.server.clone().ok_or_else(|| missing("server"))?;
    let token = parse_token(cfg.token.as_deref().ok_or_else(|| missing("token"))?)?;
    let target = parse_server(&server).ok_or_else(|| StandinError::Config {
        path: cfg_path.to_path_buf(),
        msg: format!("server {server:?} is not https://<host>[:port]"),
    })?;
    let server = format!("https://{}", target.authority());
    let start = Instant::now();
    let mut attempts = 0u32;
    let mut delay = Duration::from_millis(500);
    let mut wait = |attempts: u32, last: String| -> Result<(), StandinError> {
        log(&format!("attempt {attempts}: {last}"));
        if start.elapsed() + delay > timeout {
            return Err(StandinError::Timeout {
                server: server.clone(),
                secs: timeout.as_secs(),
                attempts,
                last,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
        Ok(())
    };
    log(&format!("joining {server} as {user}"));
    let cacerts = loop {
        attempts += 1;
        match get(&target, &http::Tls::Insecure, "/cacerts", None) {
            Ok((200, body)) => break body,
            Ok((st, _)) => wait(attempts, format!("/cacerts answered HTTP {st}"))?,
            Err(e) => wait(attempts, e)?,
        }
    };
    let got = hex::encode(Sha256::digest(&cacerts));
    log(&format!(
        "received /cacerts from {server}: {} bytes, sha256 {got}",
        cacerts.len()
    ));
    match &token.ca_hash {
        Some(want) if *want != got => {
            return Err(StandinError::CaMismatch {
                server,
                got,
                want: want.clone(),
            })
        }
        Some(_) => log("CA matches the token's hash"),
        None => log("token has no CA hash; trusting the CA the server presents"),
    }
    let roots = http::roots_from_pem(&cacerts)
        .map_err(|e| StandinError::Cert(format!("{server}/cacerts: {e}")))?;
    let verified = http::Tls::Roots(Arc::new(roots));
    let auth = token.basic(user);
    loop {
        attempts += 1;
        match get(&target, &verified, "/v1-rke2/readyz", Some(&auth)) {
            Ok((st @ (401 | 403), _)) => {
                return Err(StandinError::TokenRejected {
                    server,
                    status: st,
                    user: user.to_string(),
                })
            }
            Ok((200, body)) if body.trim_ascii() == b"ok" => break,
            Ok((st, body)) => wait(
                attempts,
                format!(
                    "/v1-rke2/readyz answered HTTP {st}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                ),
            )?,
            Err(e) => wait(attempts, e)?,
        }
    }
    log(&format!("/v1-rke2/readyz on {server}: ok"));
    Ok(Joined0 {
        server,
        target,
        ca_sha256: got,
        verified,
        auth,
    })
}

/// Joins the server named in the config; writes `agent/joined` on success.
pub fn agent(opts: &AgentOpts) -> Result<Joined, StandinError> {
    let cfg = Config::load(&opts.root)?;
    let images = check_images(&opts.root)?;
    let j = join(&cfg, &opts.root.join(CONFIG), "node", opts.timeout)?;
    log(&format!("joined {}", j.server));
    let joined = opts.root.join(AGENT_DIR).join("joined");
    let mut rec = format!("server={}\nca-sha256={}\n", j.server, j.ca_sha256);
    for i in &images {
        rec.push_str(&format!("image={}\n", i.display()));
    }
    write_atomic(&joined, rec.as_bytes(), 0o644)?;
    notify_ready(&format!("joined {}", j.server));
    Ok(Joined {
        server: j.server,
        ca_sha256: j.ca_sha256,
        images,
    })
}

/// A server whose config names `server:` joins that cluster before serving, as an RKE2 server
/// joining an HA control plane does: authenticated as `server`, it fetches the cluster CA from
/// `/v1-rke2/server-bootstrap` and serves with it, so the same token works against every
/// server. Kept across restarts (the CA is only fetched while `server/tls/` has none).
pub fn join_cluster(root: &Path, timeout: Duration) -> Result<Option<Joined>, StandinError> {
    let cfg = Config::load(root)?;
    if cfg.server.is_none() {
        return Ok(None);
    }
    let tls = root.join(SERVER_DIR).join("tls");
    let (ca, key) = (tls.join("server-ca.crt"), tls.join("server-ca.key"));
    let j = join(&cfg, &root.join(CONFIG), "server", timeout)?;
    if !(ca.exists() && key.exists()) {
        let body = match get(
            &j.target,
            &j.verified,
            "/v1-rke2/server-bootstrap",
            Some(&j.auth),
        ) {
            Ok((200, body)) => body,
            Ok((st, _)) => {
                return Err(StandinError::Cert(format!(
                    "{}/v1-rke2/server-bootstrap answered HTTP {st}",
                    j.server
                )))
            }
            Err(e) => {
                return Err(StandinError::Cert(format!(
                    "{}/v1-rke2/server-bootstrap: {e}",
                    j.server
                )))
            }
        };
        let text = String::from_utf8_lossy(&body);
        let (crt_pem, key_pem) = text.split_once(BOOTSTRAP_SEPARATOR).ok_or_else(|| {
            StandinError::Cert(format!(
                "{}/v1-rke2/server-bootstrap: not a CA certificate and key",
                j.server
            ))
        })?;
        if hex::encode(Sha256::digest(crt_pem.as_bytes())) != j.ca_sha256 {
            return Err(StandinError::Cert(format!(
                "{}/v1-rke2/server-bootstrap: the CA differs from /cacerts",
                j.server
            )));
        }
        write_atomic(&key, key_pem.as_bytes(), 0o600)?;
        write_atomic(&ca, crt_pem.as_bytes(), 0o644)?;
        log(&format!("adopted the cluster CA of {}", j.server));
    }
    write_atomic(
        &root.join(SERVER_DIR).join("joined"),
        format!("server={}\nca-sha256={}\n", j.server, j.ca_sha256).as_bytes(),
        0o644,
    )?;
    log(&format!("joined {} as a server", j.server));
    Ok(Some(Joined {
        server: j.server,
        ca_sha256: j.ca_sha256,
        images: Vec::new(),
    }))
}

/// Between the CA certificate and its key in a `/v1-rke2/server-bootstrap` answer.
const BOOTSTRAP_SEPARATOR: &str = "\n---8<--- server-ca.key\n";

fn notify_ready(status: &str) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
    ) {
        log(&format!("sd_notify: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

/// Runs `rke2 server|agent ARGS`; `args` excludes the subcommand.
pub fn main(cmd: &str, args: &[String]) -> Result<(), StandinError> {
    let mut root = PathBuf::from("/");
    let mut bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
    let mut ready_delay = None;
    let mut tls_san = Vec::new();
    let mut timeout = Duration::from_secs(600);
    let mut exit_after_join = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (k, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| StandinError::Usage(format!("{k} needs a value")))
        };
        match k {
            "--root" => root = PathBuf::from(val()?),
            "--bind" if cmd == "server" => {
                let v = val()?;
                bind = match v.parse::<SocketAddr>() {
                    Ok(a) => a,
                    Err(_) => SocketAddr::new(
                        v.parse().map_err(|_| {
                            StandinError::Usage(format!("--bind {v}: not an IP or IP:port"))
                        })?,
                        PORT,
                    ),
                };
            }
            "--ready-delay" if cmd == "server" => {
                let v = val()?;
                ready_delay = Some(v.parse().map_err(|_| {
                    StandinError::Usage(format!("--ready-delay {v}: not a number of seconds"))
                })?);
            }
            "--tls-san" if cmd == "server" => tls_san.push(val()?),
            "--exit-after-join" if cmd == "agent" => exit_after_join = true,
            "--timeout" => {
                let v = val()?;
                timeout = Duration::from_secs(v.parse().map_err(|_| {
                    StandinError::Usage(format!("--timeout {v}: not a number of seconds"))
                })?);
            }
            other => {
                return Err(StandinError::Usage(format!(
                    "unknown option {other:?} for `rke2 {cmd}` (server: --root --bind \
                     --ready-delay --tls-san --timeout; agent: --root --timeout --exit-after-join)"
                )))
            }
        }
    }
    match cmd {
        "server" => {
            join_cluster(&root, timeout)?;
            Server::bind(&ServerOpts {
                root,
                bind,
                ready_delay,
                tls_san,
            })?
            .serve()
        }
        _ => {
            agent(&AgentOpts { root, timeout })?;
            if !exit_after_join {
                // The real agent keeps running; its unit (Type=notify, Restart=always) would
                // otherwise restart and rejoin forever.
                log("joined; staying up (pass --exit-after-join to exit instead)");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Ok(())
        }
    }
}
