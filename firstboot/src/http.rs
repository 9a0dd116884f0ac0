//! A minimal HTTP/1.1 GET client over TCP or rustls (one request per connection), enough for
//! fetching a config URL and talking to the RKE2 supervisor. Bodies are size-limited.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("URL {0:?}: expected http://host[:port]/path or https://...")]
    BadUrl(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: {msg}")]
    Protocol { host: String, msg: String },
    #[error("{host}: response larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
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
        if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
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
}

/// How to treat the server's certificate.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Verify against these roots.
    Roots(Arc<RootCertStore>),
    /// Accept any certificate (only to fetch `/cacerts`, whose hash is checked afterwards).
    Insecure,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(tls: &Tls) -> Result<ClientConfig, std::io::Error> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    Ok(match tls {
        Tls::Roots(r) => b.with_root_certificates(r.clone()).with_no_client_auth(),
        Tls::Insecure => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth(),
    })
}

/// Resolves `host:port` to its addresses.
pub fn resolve(url: &Url) -> Result<Vec<SocketAddr>, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::NoAddress {
            host: url.host.clone(),
        });
    }
    Ok(addrs)
}

/// One GET request. `auth` is a ready `Authorization` header value (never logged).
pub fn get(
    url: &Url,
    tls: &Tls,
    auth: Option<&str>,
    timeout: Duration,
    limit: usize,
) -> Result<Response, HttpError> {
    let mut s = send(url, tls, auth, timeout)?;
    let raw = read_all(&mut s, url, limit)?;
    parse_response(url, &raw, limit)
}

/// A streamed response body (the header already read).
pub struct Body {
    pub status: u16,
    /// Content-Length, when the server sent one.
    pub length: Option<u64>,
    reader: Box<dyn Read + Send>,
    left: Option<u64>,
    host: String,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = match self.left {
            Some(0) => return Ok(0),
            Some(n) => buf.len().min(n.min(usize::MAX as u64) as usize),
            None => buf.len(),
        };
        let n = match self.reader.read(&mut buf[..want]) {
            // Servers that close without close_notify: what arrived is what we have.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            r => r?,
        };
        if let Some(l) = self.left.as_mut() {
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{}: connection closed {l} bytes before the end", self.host),
                ));
            }
            *l -= n as u64;
        }
        Ok(n)
    }
}

/// One GET request whose body is streamed, not held in memory (an update bundle of gigabytes).
/// Chunked responses are refused (static file servers send a Content-Length).
pub fn open(url: &Url, tls: &Tls, timeout: Duration) -> Result<Body, HttpError> {
    let mut s = send(url, tls, None, timeout)?;
    let proto = |msg: String| HttpError::Protocol {
        host: url.authority(),
        msg,
    };
    // The header, byte by byte (it is small), so nothing of the body is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(proto("response header larger than 64 KiB".into()));
        }
        match s.read(&mut b) {
            Ok(0) => return Err(proto("connection closed inside the response header".into())),
            Ok(_) => head.push(b[0]),
            Err(source) => {
                return Err(HttpError::Tls {
                    host: url.authority(),
                    source,
                })
            }
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| proto("bad status line".into()))?;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("transfer-encoding") && !v.eq_ignore_ascii_case("identity") {
                return Err(proto(format!(
                    "Transfer-Encoding {v} is not supported for a streamed download"
                )));
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.parse::<u64>()
                        .map_err(|_| proto("bad Content-Length".into()))?,
                );
            }
        }
    }
    Ok(Body {
        status,
        length,
        reader: s,
        left: length,
        host: url.authority(),
    })
}

/// Connects, sends the GET request and returns the connection to read the response from.
fn send(
    url: &Url,
    tls: &Tls,
    auth: Option<&str>,
    timeout: Duration,
) -> Result<Box<dyn Read + Send>, HttpError> {
    let addrs = resolve(url)?;
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(source) => last = Some(HttpError::Connect { addr: a, source }),
        }
    }
    let tcp = match stream {
        Some(s) => s,
        None => {
            return Err(last.unwrap_or(HttpError::NoAddress {
                host: url.host.clone(),
            }))
        }
    };
    let host_err = |source| HttpError::Tls {
        host: url.authority(),
        source,
    };
    tcp.set_read_timeout(Some(timeout)).map_err(host_err)?;
    tcp.set_write_timeout(Some(timeout)).map_err(host_err)?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rke2-firstboot\r\nAccept: */*\r\nConnection: close\r\n",
        url.path,
        url.authority()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    let raw = if url.https {
        let cfg = client_config(tls).map_err(host_err)?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| HttpError::Tls {
            host: url.host.clone(),
            source: std::io::Error::other(e),
        })?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name)
            .map_err(|e| host_err(std::io::Error::other(e)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(req.as_bytes()).map_err(host_err)?;
        Box::new(s) as Box<dyn Read + Send>
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).map_err(host_err)?;
        Box::new(s)
    };
    Ok(raw)
}

fn read_all(r: &mut impl Read, url: &Url, limit: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let cap = limit + 64 * 1024;
    let mut buf = [0u8; 16384];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > cap {
                    return Err(HttpError::TooLarge {
                        host: url.authority(),
                        limit,
                    });
                }
            }
            // Servers that close without close_notify: what arrived is what we have.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(source) => {
                return Err(HttpError::Tls {
                    host: url.authority(),
                    source,
                })
            }
        }
    }
    Ok(out)
}

fn parse_response(url: &Url, raw: &[u8], limit: usize) -> Result<Response, HttpError> {
    let proto = |msg: &str| HttpError::Protocol {
        host: url.authority(),
        msg: msg.to_string(),
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| proto("no complete response header"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| proto("response header is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proto("bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.parse::<usize>()
                        .map_err(|_| proto("bad Content-Length"))?,
                );
            }
        }
    }
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body).ok_or_else(|| proto("bad chunked encoding"))?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| proto("body shorter than Content-Length"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > limit {
        return Err(HttpError::TooLarge {
            host: url.authority(),
            limit,
        });
    }
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Parses PEM certificates into a root store.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("bad PEM: {e}"))?;
        store.add(c).map_err(|e| format!("bad certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no certificate in PEM data".into());
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://[fd00::1]:9345/cacerts").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("fd00::1", 9345, "/cacerts")
        );
        let u = Url::parse("http://cfg.example/x?y=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/x?y=1"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("https://user@x/").is_err());
    }

    #[test]
    fn chunked() {
        assert_eq!(dechunk(b"2\r\nok\r\n0\r\n\r\n").unwrap(), b"ok");
        assert!(dechunk(b"zz\r\n").is_none());
    }
}
