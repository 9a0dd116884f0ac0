//! Join preflight: before a joining node starts RKE2, check that the supervisor at
//! `https://<server>:9345` is reachable, serves the CA the token pins, and accepts the token.
//!
//! Protocol (as an RKE2 agent does it): `GET /cacerts` without verification, compare its sha256
//! with the hash inside a `K10<hash>::<user>:<password>` token, then speak TLS verified against
//! that CA: `GET /v1-rke2/readyz` with basic auth (`node` for agents, `server` for servers)
//! until the body is `ok`. Tokens never appear in errors or progress messages.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::dialects::native::Role;
use crate::http::{self, HttpError, Tls, Url};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("token: {0}")]
    BadToken(&'static str),
    #[error("server URL {0:?} is not a valid https URL")]
    BadServer(String),
    #[error(
        "server CA does not match the token — possible interception ({server}/cacerts has sha256 \
         {got}, the token pins {want})"
    )]
    CaMismatch {
        server: String,
        got: String,
        want: String,
    },
    #[error("{server}/cacerts: {msg}")]
    BadCa { server: String, msg: String },
    #[error("token rejected by {server} (HTTP {status} from /v1-rke2/readyz as user {user})")]
    TokenRejected {
        server: String,
        status: u16,
        user: &'static str,
    },
    #[error(
        "{server} not ready after {secs} s ({attempts} attempts); last: {last}. Check that the \
         server is up and reachable on port 9345 from this node"
    )]
    Timeout {
        server: String,
        secs: u64,
        attempts: u32,
        last: String,
    },
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// sha256 (hex, lower case) of the server's `/cacerts`, from a `K10` token.
    pub ca_hash: Option<String>,
    password: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("ca_hash", &self.ca_hash)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Token {
    /// Secure `K10<sha256 hex>::<user>:<password>`, or a plain password / bootstrap token.
    pub fn parse(s: &str) -> Result<Token, PreflightError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PreflightError::BadToken("empty"));
        }
        if let Some(rest) = s.strip_prefix("K10") {
            let (hash, creds) = rest.split_once("::").ok_or(PreflightError::BadToken(
                "K10 token without `::<user>:<password>`",
            ))?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PreflightError::BadToken(
                    "K10 token: the CA hash must be 64 hex digits (sha256)",
                ));
            }
            let password = match creds.split_once(':') {
                Some((_user, pw)) => pw,
                None => creds,
            };
            if password.is_empty() {
                return Err(PreflightError::BadToken("K10 token with an empty password"));
            }
            return Ok(Token {
                ca_hash: Some(hash.to_ascii_lowercase()),
                password: password.to_string(),
            });
        }
        Ok(Token {
            ca_hash: None,
            password: s.to_string(),
        })
    }

    /// A token with only a password (what a server accepts; no CA pin).
    pub fn password_only(password: &str) -> Token {
        Token {
            ca_hash: None,
            password: password.to_string(),
        }
    }

    /// The password part (never logged).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The `Authorization` header value for basic auth as `user` with this token's password.
    pub fn basic(&self, user: &str) -> String {
        let b =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", self.password));
        format!("Basic {b}")
    }
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub deadline: Duration,
    /// Per-request connect/read timeout.
    pub request_timeout: Duration,
}

impl Backoff {
    pub fn with_deadline(deadline: Duration) -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(15),
            deadline,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs `attempt` until it returns `Ok(Some)` or a fatal error, sleeping with exponential backoff
/// between tries; `Ok(None)` / retryable errors are retried until the deadline.
pub(crate) fn retry<T>(
    b: &Backoff,
    mut attempt: impl FnMut() -> Result<Result<T, String>, PreflightError>,
    timeout: impl Fn(u32, String) -> PreflightError,
) -> Result<T, PreflightError> {
    let start = Instant::now();
    let mut delay = b.initial;
    let mut n = 0;
    loop {
        n += 1;
        match attempt()? {
            Ok(v) => return Ok(v),
            Err(why) => {
                if start.elapsed() + delay > b.deadline {
                    return Err(timeout(n, why));
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(b.max);
            }
        }
    }
}

/// What happened, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub attempts: u32,
    pub ca_verified: bool,
}

/// Runs the join check against `server_url` (`https://host:9345`).
pub fn check(
    server_url: &str,
    token: &Token,
    role: Role,
    backoff: &Backoff,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, PreflightError> {
    let base = Url::parse(server_url)
        .ok()
        .filter(|u| u.https)
        .ok_or_else(|| PreflightError::BadServer(server_url.to_string()))?;
    let server = format!("https://{}", base.authority());
    let user = match role {
        Role::Agent => "node",
        Role::Server => "server",
    };
    let at = |path: &str| Url {
        path: path.to_string(),
        ..base.clone()
    };
    let mut attempts = 0;
    let timeout = |n: u32, last: String| PreflightError::Timeout {
        server: server.clone(),
        secs: backoff.deadline.as_secs(),
        attempts: n,
        last,
    };
    // 1. Reach the supervisor and fetch its CA bundle without verification.
    progress(&format!("connecting to {server}"));
    let cacerts = retry(
        backoff,
        || {
            attempts += 1;
            match http::get(
                &at("/cacerts"),
                &Tls::Insecure,
                None,
                backoff.request_timeout,
                1 << 20,
            ) {
                Ok(r) if r.status == 200 => Ok(Ok(r.body)),
                Ok(r) => Ok(Err(format!("/cacerts answered HTTP {}", r.status))),
                Err(e) => Ok(Err(e.to_string())),
            }
        },
        timeout,
    )?;
    let got = hex::encode(Sha256::digest(&cacerts));
    let ca_verified = match &token.ca_hash {
        Some(want) if *want != got => {
            return Err(PreflightError::CaMismatch {
                server,
                got,
                want: want.clone(),
            })
        }
        Some(_) => true,
        None => {
            progress("token has no CA hash (not a K10 token); trusting the CA the server presents");
            false
        }
    };
    let roots = http::roots_from_pem(&cacerts).map_err(|msg| PreflightError::BadCa {
        server: server.clone(),
        msg,
    })?;
    let tls = Tls::Roots(Arc::new(roots));
    // 2. Wait for readyz with the token, verifying the server against the pinned CA.
    progress(&format!(
        "CA matches token; waiting for {server}/v1-rke2/readyz"
    ));
    let auth = token.basic(user);
    retry(
        backoff,
        || {
            attempts += 1;
            match http::get(
                &at("/v1-rke2/readyz"),
                &tls,
                Some(&auth),
                backoff.request_timeout,
                1 << 16,
            ) {
                Ok(r) if r.status == 401 || r.status == 403 => Err(PreflightError::TokenRejected {
                    server: server.clone(),
                    status: r.status,
                    user,
                }),
                Ok(r) if r.status == 200 && r.body.trim_ascii() == b"ok" => Ok(Ok(())),
                Ok(r) => {
                    let msg = format!(
                        "/v1-rke2/readyz answered HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).trim()
                    );
                    progress(&msg);
                    Ok(Err(msg))
                }
                Err(e @ HttpError::Tls { .. }) => Ok(Err(format!(
                    "{e} (the server certificate must chain to the CA from /cacerts)"
                ))),
                Err(e) => Ok(Err(e.to_string())),
            }
        },
        timeout,
    )?;
    Ok(Outcome {
        attempts,
        ca_verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let h = "a".repeat(64);
        let t = Token::parse(&format!("K10{h}::server:s3cret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(h.as_str()));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Token::parse("K10abc::server:x").is_err());
        assert!(Token::parse("K10").is_err());
        assert_eq!(
            Token::parse("abcdef.0123456789abcdef").unwrap().ca_hash,
            None
        );
    }
}
