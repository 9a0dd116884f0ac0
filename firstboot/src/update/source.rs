//! Where `apply` reads a bundle from: a file, a block device, or an http(s) URL streamed.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::http::{self, Tls, Url};

/// The system CA bundle (Debian's ca-certificates).
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Opens `source`: `http://` / `https://` (verified against `ca_file` or [`SYSTEM_CA`]) or a
/// path.
pub fn open(source: &str, ca_file: Option<&Path>) -> Result<Box<dyn Read>, String> {
    if source.starts_with("https://") || source.starts_with("http://") {
        let url = Url::parse(source).map_err(|e| e.to_string())?;
        let tls = if url.https {
            let ca = ca_file.unwrap_or(Path::new(SYSTEM_CA));
            let pem = std::fs::read(ca).map_err(|e| {
                format!(
                    "reading the CA bundle {}: {e} (pass --ca-file)",
                    ca.display()
                )
            })?;
            let roots = http::roots_from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
            Tls::Roots(std::sync::Arc::new(roots))
        } else {
            Tls::Insecure
        };
        let body = http::open(&url, &tls, Duration::from_secs(60))
            .map_err(|e| format!("{source}: {e}"))?;
        if body.status != 200 {
            return Err(format!("{source}: HTTP {}", body.status));
        }
        return Ok(Box::new(body));
    }
    let f = std::fs::File::open(source).map_err(|e| format!("opening {source}: {e}"))?;
    Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
}
