//! A streaming HTTP/1.1 GET client for release downloads: plain TCP or rustls (verified against
//! the host's CA bundle), `Range` requests for resuming, redirects (GitHub release assets
//! redirect to a CDN), and proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (`CONNECT` for
//! https, absolute-form requests for http). One request per connection. Written over the rustls
//! the workspace already uses rather than adding an HTTP crate and its dependency tree.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("{url}: cannot connect to {addr}: {source}")]
    Connect {
        url: String,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: {msg}")]
    Protocol { url: String, msg: String },
    #[error("{url}: proxy {proxy} refused the tunnel: {status}")]
    ProxyRefused {
        url: String,
        proxy: String,
        status: String,
    },
    #[error("CA bundle {}: {msg}; set SSL_CERT_FILE to a PEM bundle", path.display())]
    CaBundle { path: PathBuf, msg: String },
    #[error("no CA bundle found (looked at SSL_CERT_FILE and {}); install ca-certificates", CA_BUNDLES.join(", "))]
    NoCaBundle,
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    Redirects { url: String },
}

const MAX_REDIRECTS: usize = 10;

/// Where distributions keep the system CA bundle (Debian, Fedora/RHEL, openSUSE, Alpine).
pub const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// `user:password` for proxies that ask for it.
    pub userinfo: Option<String>,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::BadUrl(s.to_string());
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((u, a)) => (Some(u.to_string()), a),
            None => (None, authority),
        };
        if authority.is_empty() || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        let default = if https { 443 } else { 80 };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url {
            https,
            userinfo,
            host,
            port,
            path: path.to_string(),
        })
    }

    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `host[:port]`, the port only when it is not the scheme's default (the `Host` header).
    fn host_header(&self) -> String {
        if self.port == if self.https { 443 } else { 80 } {
            match self.host.contains(':') {
                true => format!("[{}]", self.host),
                false => self.host.clone(),
            }
        } else {
            self.authority()
        }
    }

    /// The URL without credentials (for messages and the manifest).
    pub fn display(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host_header(),
            self.path
        )
    }

    /// Resolves a `Location` header against this URL.
    fn join(&self, location: &str) -> Result<Url, HttpError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Url::parse(location);
        }
        let mut u = self.clone();
        u.userinfo = None;
        if location.starts_with('/') {
            u.path = location.to_string();
        } else {
            let dir = match u.path.rfind('/') {
                Some(i) => &u.path[..=i],
                None => "/",
            };
            u.path = format!("{dir}{location}");
        }
        Ok(u)
    }
}

/// Proxy settings, normally from the environment ([`Proxies::from_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<String>,
    pub https: Option<String>,
    /// `NO_PROXY` entries: host names (matching subdomains), `.domain`, `*`, optional `:port`.
    pub no_proxy: Vec<String>,
}

impl Proxies {
    /// Reads `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (upper or lower case) through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Proxies {
        let get = |n: &str| {
            var(n)
                .or_else(|| var(&n.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        Proxies {
            http: get("HTTP_PROXY"),
            https: get("HTTPS_PROXY"),
            no_proxy: get("NO_PROXY")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn from_env() -> Proxies {
        Proxies::from_vars(|n| std::env::var(n).ok())
    }

    /// The proxy to use for `url`, if any.
    pub fn for_url(&self, url: &Url) -> Result<Option<Url>, HttpError> {
        let host = url.host.to_ascii_lowercase();
        for e in &self.no_proxy {
            if e == "*" {
                return Ok(None);
            }
            let name = e.rsplit_once(':').map_or(e.as_str(), |(h, p)| {
                if p.parse::<u16>().is_ok() && !h.is_empty() {
                    h
                } else {
                    e
                }
            });
            let name = name.trim_start_matches('.');
            if host == name || host.ends_with(&format!(".{name}")) {
                return Ok(None);
            }
        }
        let p = if url.https { &self.https } else { &self.http };
        match p {
            None => Ok(None),
            Some(p) if p.contains("://") => Url::parse(p).map(Some),
            Some(p) => Url::parse(&format!("http://{p}")).map(Some),
        }
    }
}

/// A client: proxies, the CA bundle (loaded on the first https request), timeouts.
#[derive(Debug)]
pub struct Client {
    pub proxies: Proxies,
    /// PEM CA bundle; `None` means [`default_ca_bundle`].
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    tls: OnceLock<Arc<ClientConfig>>,
}

/// `SSL_CERT_FILE`, else the first of [`CA_BUNDLES`] that exists.
pub fn default_ca_bundle() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(f));
    }
    CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn load_roots(path: &Path) -> Result<RootCertStore, HttpError> {
    let bad = |msg: String| HttpError::CaBundle {
        path: path.to_path_buf(),
        msg,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| bad(format!("bad PEM: {e}")))?;
        // Bundles carry the odd certificate rustls cannot parse; the rest still count.
        let _ = store.add(c);
    }
    if store.is_empty() {
        return Err(bad("no usable certificate".into()));
    }
    Ok(store)
}

/// An open response; reading it yields the body (an early end of a body with a known length
/// is an `UnexpectedEof` error).
pub struct Response {
    pub status: u16,
    /// The URL that answered (after redirects), without credentials.
    pub url: String,
    headers: Vec<(String, String)>,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("url", &self.url)
            .finish()
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body length announced by the server (`Content-Length`), if any.
    pub fn content_length(&self) -> Option<u64> {
        match self.body.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

#[derive(Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

struct Body {
    r: BufReader<Conn>,
    framing: Framing,
    /// Bytes left in the body (Length) or in the current chunk (Chunked).
    left: u64,
    done: bool,
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

impl Body {
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.r).take(4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(eof("connection closed inside a chunk header"));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Close => match self.r.read(buf) {
                Ok(0) => {
                    self.done = true;
                    Ok(0)
                }
                // A TLS peer closing without close_notify ends an unframed body.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.done = true;
                    Ok(0)
                }
                r => r,
            },
            Framing::Length(_) => {
                if self.left == 0 {
                    self.done = true;
                    return Ok(0);
                }
                let want = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                let n = self.r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(eof("connection closed before the end of the body"));
                }
                self.left -= n as u64;
                Ok(n)
            }
            Framing::Chunked => {
                if self.left == 0 {
                    let line = self.read_line()?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if size == 0 {
                        // Trailers up to the empty line.
                        while !self.read_line()?.is_empty() {}
                        self.done = true;
                        return Ok(0);
                    }
                    self.left = size;
                }
                let want = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                let n = self.r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(eof("connection closed inside a chunk"));
                }
                self.left -= n as u64;
                if self.left == 0 {
                    let mut crlf = [0u8; 2];
                    self.r.read_exact(&mut crlf)?;
                }
                Ok(n)
            }
        }
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Status, status line, headers.
type Head = (u16, String, Vec<(String, String)>);

/// Reads a response head (status line and headers) byte by byte, so nothing after it is
/// consumed (a `CONNECT` tunnel carries TLS right after).
fn read_head(r: &mut impl Read, url: &str) -> Result<Head, HttpError> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = r.read(&mut b).map_err(|source| HttpError::Io {
            url: url.into(),
            source,
        })?;
        if n == 0 || head.len() > 64 * 1024 {
            return Err(HttpError::Protocol {
                url: url.into(),
                msg: "no complete response header".into(),
            });
        }
        head.push(b[0]);
    }
    parse_head(&head, url)
}

fn parse_head(head: &[u8], url: &str) -> Result<Head, HttpError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Protocol {
            url: url.into(),
            msg: format!("bad status line {status_line:?}"),
        })?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, status_line, headers))
}

impl Client {
    pub fn new(proxies: Proxies, ca_file: Option<PathBuf>) -> Client {
        Client {
            proxies,
            ca_file,
            timeout: Duration::from_secs(60),
            tls: OnceLock::new(),
        }
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, HttpError> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let path = match &self.ca_file {
            Some(p) => p.clone(),
            None => default_ca_bundle().ok_or(HttpError::NoCaBundle)?,
        };
        let roots = load_roots(&path)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::CaBundle {
                path: path.clone(),
                msg: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let cfg = Arc::new(cfg);
        let _ = self.tls.set(cfg.clone());
        Ok(cfg)
    }

    fn connect(&self, url: &Url, shown: &str) -> Result<TcpStream, HttpError> {
        let addrs: Vec<_> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|source| HttpError::Connect {
                url: shown.into(),
                addr: url.authority(),
                source,
            })?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(self.timeout));
                    let _ = s.set_write_timeout(Some(self.timeout));
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(HttpError::Connect {
            url: shown.into(),
            addr: url.authority(),
            source: last,
        })
    }

    /// One GET, following redirects. `from` asks for the body from that byte on (`Range`);
    /// the caller checks for `206` and `Content-Range`.
    pub fn get(&self, url: &str, from: Option<u64>) -> Result<Response, HttpError> {
        let mut u = Url::parse(url)?;
        for _ in 0..=MAX_REDIRECTS {
            let r = self.get_once(&u, from)?;
            if matches!(r.status, 301 | 302 | 303 | 307 | 308) {
                if let Some(loc) = r.header("location") {
                    u = u.join(loc)?;
                    continue;
                }
            }
            return Ok(r);
        }
        Err(HttpError::Redirects { url: url.into() })
    }

    fn get_once(&self, url: &Url, from: Option<u64>) -> Result<Response, HttpError> {
        let shown = url.display();
        let io_err = |source| HttpError::Io {
            url: shown.clone(),
            source,
        };
        let proxy = self.proxies.for_url(url)?;
        let proxy_auth = proxy
            .as_ref()
            .and_then(|p| p.userinfo.as_ref())
            .map(|u| format!("Proxy-Authorization: Basic {}\r\n", base64(u.as_bytes())))
            .unwrap_or_default();
        let mut tcp = self.connect(proxy.as_ref().unwrap_or(url), &shown)?;
        let target = match (&proxy, url.https) {
            // Plain http through a proxy: absolute-form request to the proxy.
            (Some(_), false) => shown.clone(),
            _ => url.path.clone(),
        };
        if let (Some(p), true) = (&proxy, url.https) {
            let req = format!(
                "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n{proxy_auth}\r\n",
                a = url.authority()
            );
            tcp.write_all(req.as_bytes()).map_err(io_err)?;
            let (status, line, _) = read_head(&mut tcp, &shown)?;
            if status != 200 {
                return Err(HttpError::ProxyRefused {
                    url: shown,
                    proxy: p.display(),
                    status: line,
                });
            }
        }
        let mut conn = if url.https {
            let cfg = self.tls_config()?;
            let name = ServerName::try_from(url.host.clone()).map_err(|e| HttpError::Protocol {
                url: shown.clone(),
                msg: format!("bad server name: {e}"),
            })?;
            let c = rustls::ClientConnection::new(cfg, name).map_err(|e| HttpError::Protocol {
                url: shown.clone(),
                msg: format!("TLS: {e}"),
            })?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
        } else {
            Conn::Plain(tcp)
        };
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rke2-image/{}\r\nAccept: */*\r\nConnection: close\r\n",
            url.host_header(),
            env!("CARGO_PKG_VERSION")
        );
        if proxy.is_some() && !url.https {
            req.push_str(&proxy_auth);
        }
        if let Some(n) = from {
            req.push_str(&format!("Range: bytes={n}-\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).map_err(io_err)?;
        conn.flush().map_err(io_err)?;
        let mut r = BufReader::with_capacity(64 * 1024, conn);
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut r)
                .take(16 * 1024)
                .read_until(b'\n', &mut line)
                .map_err(io_err)?;
            if n == 0 || head.len() > 64 * 1024 {
                return Err(HttpError::Protocol {
                    url: shown,
                    msg: "connection closed before a complete response header".into(),
                });
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let (status, _, headers) = parse_head(&head, &shown)?;
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let framing = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(l) = get("content-length") {
            Framing::Length(l.parse().map_err(|_| HttpError::Protocol {
                url: shown.clone(),
                msg: format!("bad Content-Length {l:?}"),
            })?)
        } else {
            Framing::Close
        };
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Ok(Response {
            status,
            url: shown,
            headers,
            body: Body {
                r,
                framing,
                left,
                done: false,
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redirects() {
        let u = Url::parse("https://github.com/rancher/rke2/releases/download/v1%2Bx/f").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("github.com", 443));
        let r = u.join("https://objects.example/abc?x=1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.path.as_str()),
            ("objects.example", "/abc?x=1")
        );
        let r = u.join("/other").unwrap();
        assert_eq!(r.display(), "https://github.com/other");
        let p = Url::parse("http://user:pw@127.0.0.1:3128").unwrap();
        assert_eq!(p.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(p.display(), "http://127.0.0.1:3128/");
        assert!(Url::parse("ftp://x/").is_err());
    }

    #[test]
    fn no_proxy_matching() {
        let vars = |n: &str| match n {
            "HTTPS_PROXY" => Some("proxy.corp:3128".to_string()),
            "no_proxy" => Some("localhost, .internal,mirror.example:8443".to_string()),
            _ => None,
        };
        let p = Proxies::from_vars(vars);
        let via = |u: &str| p.for_url(&Url::parse(u).unwrap()).unwrap();
        assert_eq!(
            via("https://github.com/x").unwrap().authority(),
            "proxy.corp:3128"
        );
        assert!(via("https://a.b.internal/x").is_none());
        assert!(via("https://internal/x").is_none());
        assert!(via("https://mirror.example/x").is_none());
        assert!(via("https://localhost/x").is_none());
        // No HTTP_PROXY: plain http goes direct.
        assert!(via("http://github.com/x").is_none());
    }

    #[test]
    fn base64_matches_rfc4648() {
        // RFC 4648 section 10 test vectors.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
