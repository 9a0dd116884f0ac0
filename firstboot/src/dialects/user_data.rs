//! User-data wrappings cloud-init accepts around a `#cloud-config`: gzip, and MIME (a
//! multipart message, or a single part) whose parts are 7bit/8bit or base64. Exactly one
//! cloud-config part is taken; every other part type is refused naming the type (cloud-init
//! would run scripts and boothooks, or merge several cloud-config parts).

use super::{DialectError, MAX_CONFIG_BYTES};

/// What is left after unwrapping.
pub enum Unwrapped<'a> {
    /// Not wrapped (or only gzip-compressed): detect the dialect from these bytes.
    Raw(std::borrow::Cow<'a, [u8]>),
    /// A MIME part of type text/cloud-config (its `#cloud-config` line is optional).
    CloudConfig(String),
}

fn refuse(origin: &str, format: String, fix: &'static str) -> DialectError {
    DialectError::Format {
        origin: origin.to_string(),
        format,
        fix,
    }
}

/// Unwraps gzip and MIME; returns the bytes unchanged when neither applies.
pub fn unwrap<'a>(origin: &str, bytes: &'a [u8]) -> Result<Unwrapped<'a>, DialectError> {
    let bytes: std::borrow::Cow<'a, [u8]> = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut budget = MAX_CONFIG_BYTES;
        let out =
            super::gunzip("gzip-compressed user-data", bytes, &mut budget).map_err(|msg| {
                DialectError::Invalid {
                    origin: origin.to_string(),
                    dialect: "user-data",
                    msg: if msg.contains("exceed") {
                        format!(
                            "gzip-compressed user-data decompresses to more than the limit of \
                             {MAX_CONFIG_BYTES} bytes"
                        )
                    } else {
                        msg
                    },
                }
            })?;
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(Unwrapped::Raw(bytes));
    };
    let head = text.trim_start().to_ascii_lowercase();
    if !(head.starts_with("content-type:") || head.starts_with("mime-version:")) {
        return Ok(Unwrapped::Raw(bytes));
    }
    let invalid = |msg: String| DialectError::Invalid {
        origin: origin.to_string(),
        dialect: "MIME user-data",
        msg,
    };
    let (headers, body) = split_headers(text.trim_start());
    let ctype = header(&headers, "content-type").unwrap_or_default();
    let mut found: Vec<String> = Vec::new();
    if ctype.to_ascii_lowercase().starts_with("multipart/") {
        let boundary = param(&ctype, "boundary")
            .ok_or_else(|| invalid("Content-Type multipart without a boundary".into()))?;
        let delim = format!("--{boundary}");
        let mut parts = body.split(delim.as_str());
        parts.next(); // preamble
        for (i, part) in parts.enumerate() {
            if part.starts_with("--") {
                break; // closing delimiter
            }
            let part = part
                .strip_prefix("\r\n")
                .or(part.strip_prefix('\n'))
                .unwrap_or(part);
            let (h, b) = split_headers(part);
            if let Some(cc) = part_body(origin, i, &h, b)? {
                found.push(cc);
            }
        }
    } else if let Some(cc) = part_body(origin, 0, &headers, body)? {
        found.push(cc);
    }
    match found.len() {
        1 => Ok(Unwrapped::CloudConfig(found.remove(0))),
        0 => Err(invalid(
            "no text/cloud-config part; give exactly one cloud-config part".into(),
        )),
        n => Err(refuse(
            origin,
            format!("MIME with {n} cloud-config parts (cloud-init merges them)"),
            "merge them into one #cloud-config part",
        )),
    }
}

/// A part's decoded cloud-config text, or None for an empty part; other types are refused.
fn part_body(
    origin: &str,
    i: usize,
    headers: &[(String, String)],
    body: &str,
) -> Result<Option<String>, DialectError> {
    let ctype = header(headers, "content-type").unwrap_or_else(|| "text/plain".into());
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let encoding = header(headers, "content-transfer-encoding")
        .unwrap_or_else(|| "7bit".into())
        .to_ascii_lowercase();
    let data = match encoding.as_str() {
        "7bit" | "8bit" | "binary" => body.as_bytes().to_vec(),
        "base64" => super::decode_base64(&format!("MIME part {i}"), body).map_err(|msg| {
            DialectError::Invalid {
                origin: origin.to_string(),
                dialect: "MIME user-data",
                msg,
            }
        })?,
        other => {
            return Err(refuse(
                origin,
                format!("MIME part {i} with Content-Transfer-Encoding {other}"),
                "use 7bit or base64",
            ))
        }
    };
    let text = String::from_utf8(data).map_err(|_| DialectError::Invalid {
        origin: origin.to_string(),
        dialect: "MIME user-data",
        msg: format!("MIME part {i} is not UTF-8 text"),
    })?;
    let starts_cc = text
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("#cloud-config");
    match mime.as_str() {
        "text/cloud-config" => Ok(Some(text)),
        "text/plain" | "text/x-not-multipart" if starts_cc => Ok(Some(text)),
        "text/plain" if text.trim().is_empty() => Ok(None),
        other => Err(refuse(
            origin,
            format!("MIME part {i} of type {other}"),
            "only text/cloud-config parts are supported; use runcmd/bootcmd for scripts",
        )),
    }
}

fn split_headers(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    loop {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return (headers, next);
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        } else {
            // Not a header: no header block at all.
            return (headers, rest);
        }
        if next.is_empty() {
            return (headers, "");
        }
        rest = next;
    }
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}
