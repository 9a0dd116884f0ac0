//! `rke2.config.url=` on the kernel command line: fetch the configuration over HTTP(S), with
//! `${mac}`, `${uuid}`, `${serial}`, `${hostname}` substituted from this machine's identity,
//! retrying with backoff until a deadline.

use std::sync::Arc;

use rke2_image_contract::cmdline;

use super::{Found, Source, SourceError};
use crate::dialects::MAX_CONFIG_BYTES;
use crate::http::{self, Tls, Url};
use crate::identity::Identity;
use crate::preflight::{retry, Backoff, PreflightError};

const NAME: &str = "kernel command line rke2.config.url";

pub struct CmdlineUrl {
    /// Contents of `/proc/cmdline`.
    pub cmdline: String,
    pub identity: Identity,
    /// PEM bundle of trusted CAs for https (the image's `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_bundle: Option<Vec<u8>>,
    pub backoff: Backoff,
}

impl std::fmt::Debug for CmdlineUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmdlineUrl")
            .field("identity", &self.identity)
            .finish()
    }
}

fn fail(msg: String) -> SourceError {
    SourceError::Failed {
        source_name: NAME,
        msg,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:` (MAC addresses).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Substitutes `${mac}` (first MAC, sorted), `${uuid}`, `${serial}`, `${hostname}`.
pub fn substitute(template: &str, id: &Identity) -> Result<String, SourceError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| fail(format!("unterminated ${{ in {template:?}")))?;
        let var = &after[..end];
        let val = match var {
            "mac" => id.first_mac(),
            "uuid" => id.uuid.as_deref(),
            "serial" => id.serial.as_deref(),
            "hostname" => id.hostname.as_deref(),
            _ => {
                return Err(fail(format!(
                    "unknown variable ${{{var}}}; known: ${{mac}}, ${{uuid}}, ${{serial}}, ${{hostname}}"
                )))
            }
        }
        .ok_or_else(|| fail(format!("the URL uses ${{{var}}} but this machine has none ({id})")))?;
        out.push_str(&encode(val));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl CmdlineUrl {
    pub fn from_paths(
        proc: &std::path::Path,
        root: &std::path::Path,
        identity: Identity,
        backoff: Backoff,
    ) -> Self {
        CmdlineUrl {
            cmdline: std::fs::read_to_string(proc.join("cmdline")).unwrap_or_default(),
            identity,
            ca_bundle: std::fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).ok(),
            backoff,
        }
    }
}

impl Source for CmdlineUrl {
    fn name(&self) -> &'static str {
        NAME
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        let Some(template) = cmdline::get(&self.cmdline, cmdline::CONFIG_URL) else {
            return Ok(None);
        };
        let url_s = substitute(template, &self.identity)?;
        let url = Url::parse(&url_s).map_err(|e| fail(e.to_string()))?;
        let tls = if url.https {
            let pem = self
                .ca_bundle
                .as_deref()
                .ok_or_else(|| fail("https URL but the image has no CA bundle".into()))?;
            Tls::Roots(Arc::new(http::roots_from_pem(pem).map_err(fail)?))
        } else {
            Tls::Insecure
        };
        let body = retry(
            &self.backoff,
            || match http::get(
                &url,
                &tls,
                None,
                self.backoff.request_timeout,
                MAX_CONFIG_BYTES,
            ) {
                Ok(r) if r.status == 200 => Ok(Ok(r.body)),
                // Not found / forbidden will not fix themselves... unless the config server is
                // being provisioned; retry them too, the deadline bounds the wait.
                Ok(r) => Ok(Err(format!("HTTP {}", r.status))),
                Err(e) => Ok(Err(e.to_string())),
            },
            |n, last| PreflightError::Timeout {
                server: url_s.clone(),
                secs: self.backoff.deadline.as_secs(),
                attempts: n,
                last,
            },
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(Some(Found {
            origin: format!("{} {url_s}", cmdline::CONFIG_URL),
            bytes: body,
            meta_hostname: None,
        }))
    }
}
