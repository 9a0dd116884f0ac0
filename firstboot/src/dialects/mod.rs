//! Configuration dialects, detected from content, each mapped onto one [`Plan`].
//!
//! - `#cloud-config` on the first line: [`cloud_config`].
//! - A JSON object with `ignition.version`: [`ignition`].
//! - YAML with `apiVersion: rke2-image/...`: [`native`].

pub mod cloud_config;
pub mod ignition;
pub mod native;
pub mod user_data;

use crate::plan::{Dialect, Plan};

/// Largest configuration accepted from any source.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Largest total of decoded file contents (base64, gzip) one configuration may produce.
pub const MAX_DECODED_BYTES: usize = 64 << 20;
/// Most entries (files, units, users, ...) one configuration may list.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DialectError {
    #[error("{origin}: configuration is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        origin: String,
        size: usize,
        limit: usize,
    },
    #[error("{origin}: configuration is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { origin: String, offset: usize },
    #[error("{origin}: configuration is empty")]
    Empty { origin: String },
    #[error(
        "{origin}: cannot tell the format; expected `#cloud-config` on the first line, an Ignition \
         JSON config with ignition.version, or YAML with `apiVersion: {api}`"
    )]
    Unknown { origin: String, api: &'static str },
    #[error("{origin}: shell-script user-data is not supported; use #cloud-config runcmd instead")]
    Script { origin: String },
    #[error("{origin}: {format} user-data is not supported on this node; {fix}")]
    Format {
        origin: String,
        format: String,
        fix: &'static str,
    },
    #[error("{origin}: {dialect}: {msg}")]
    Invalid {
        origin: String,
        dialect: &'static str,
        msg: String,
    },
}

/// Parser budget against alias bombs and deep nesting (serde-saphyr counts events, aliases and
/// replayed anchors and stops when over budget).
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o.alias_limits.max_total_replayed_events = 100_000;
    o.strict_booleans = true;
    // Error snippets would quote configuration lines, and those may hold tokens.
    o.with_snippet = false;
    o
}

/// Detects the dialect of `bytes` (after the common size and UTF-8 checks).
pub fn detect<'a>(origin: &str, bytes: &'a [u8]) -> Result<(Dialect, &'a str), DialectError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(DialectError::TooLarge {
            origin: origin.to_string(),
            size: bytes.len(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DialectError::NotUtf8 {
        origin: origin.to_string(),
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(DialectError::Empty {
            origin: origin.to_string(),
        });
    }
    let first = trimmed.lines().next().unwrap_or("").trim_end();
    // cloud-init compares the start of user-data case-insensitively.
    let lower = first.to_ascii_lowercase();
    if lower.starts_with("#cloud-config") {
        // cloud-init matches the longest known prefix: these two are other formats.
        if lower.starts_with("#cloud-config-archive") || lower.starts_with("#cloud-config-jsonp") {
            let fmt = first.split_whitespace().next().unwrap_or(first);
            return Err(DialectError::Format {
                origin: origin.to_string(),
                format: fmt.to_string(),
                fix: "use a plain #cloud-config document",
            });
        }
        return Ok((Dialect::CloudConfig, text));
    }
    if first.starts_with("#!") {
        return Err(DialectError::Script {
            origin: origin.to_string(),
        });
    }
    for (prefix, format, fix) in [
        (
            "#include",
            "#include (URLs to fetch)",
            "put the #cloud-config document itself in the user-data",
        ),
        (
            "#cloud-boothook",
            "#cloud-boothook",
            "use #cloud-config bootcmd instead",
        ),
        (
            "## template:",
            "Jinja template",
            "render the template before handing it to the node",
        ),
        (
            "#part-handler",
            "#part-handler",
            "use a plain #cloud-config document",
        ),
    ] {
        if lower.starts_with(prefix) {
            return Err(DialectError::Format {
                origin: origin.to_string(),
                format: format.to_string(),
                fix,
            });
        }
    }
    if trimmed.starts_with('{') {
        return Ok((Dialect::Ignition, text));
    }
    if text.lines().any(|l| {
        l.strip_prefix("apiVersion:").is_some_and(|v| {
            v.trim()
                .trim_matches(['"', '\''])
                .starts_with(native::API_GROUP)
        })
    }) {
        return Ok((Dialect::Native, text));
    }
    Err(DialectError::Unknown {
        origin: origin.to_string(),
        api: native::API_VERSION,
    })
}

/// Detects and parses a configuration. `meta_hostname` is the NoCloud `local-hostname`, used
/// when the configuration names no hostname itself.
pub fn parse(
    origin: &str,
    bytes: &[u8],
    meta_hostname: Option<&str>,
) -> Result<Plan, DialectError> {
    let unwrapped = user_data::unwrap(origin, bytes)?;
    let (dialect, text) = match &unwrapped {
        user_data::Unwrapped::CloudConfig(t) => (Dialect::CloudConfig, t.as_str()),
        user_data::Unwrapped::Raw(b) => detect(origin, b)?,
    };
    let invalid = |msg: String| DialectError::Invalid {
        origin: origin.to_string(),
        dialect: dialect.name(),
        msg,
    };
    let mut plan = match dialect {
        Dialect::Native => native::parse(text).map_err(invalid)?,
        Dialect::Ignition => ignition::parse(text).map_err(invalid)?,
        Dialect::CloudConfig => cloud_config::parse(text).map_err(invalid)?,
    };
    crate::plan::check_static(&plan).map_err(invalid)?;
    // A hostname file written by the configuration itself beats the meta-data.
    let writes_hostname = plan
        .files
        .iter()
        .any(|f| crate::atomic::components(&f.path).is_ok_and(|c| c == ["etc", "hostname"]));
    if plan.hostname.is_none() && !writes_hostname {
        if let Some(h) = meta_hostname {
            if crate::plan::valid_hostname(h) {
                plan.hostname = Some(h.to_string());
            } else {
                plan.warnings.push(format!(
                    "meta-data local-hostname {h:?} is not a valid hostname; ignored"
                ));
            }
        }
    }
    Ok(plan)
}

/// Reads a JSON/YAML value as an object, for dialects that walk keys by hand so that every
/// unknown key can be reported by name.
pub(crate) type Obj = serde_json::Map<String, serde_json::Value>;

/// Walks an object, calling `f` for each key; keys `f` does not handle are collected.
pub(crate) struct Walker<'a> {
    pub path: String,
    pub obj: &'a Obj,
    handled: Vec<&'static str>,
}

impl<'a> Walker<'a> {
    pub fn new(path: impl Into<String>, v: &'a serde_json::Value) -> Result<Self, String> {
        let path = path.into();
        match v.as_object() {
            Some(obj) => Ok(Walker {
                path,
                obj,
                handled: Vec::new(),
            }),
            None => Err(format!("{}: expected a mapping", display_path(&path))),
        }
    }

    pub fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    pub fn get(&mut self, k: &'static str) -> Option<&'a serde_json::Value> {
        self.handled.push(k);
        self.obj.get(k).filter(|v| !v.is_null())
    }

    pub fn str(&mut self, k: &'static str) -> Result<Option<&'a str>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{}: expected a string", self.key(k))),
        }
    }

    pub fn bool(&mut self, k: &'static str) -> Result<Option<bool>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| format!("{}: expected true or false", self.key(k))),
        }
    }

    pub fn array(&mut self, k: &'static str) -> Result<&'a [serde_json::Value], String> {
        match self.get(k) {
            None => Ok(&[]),
            Some(v) => match v.as_array() {
                Some(a) if a.len() > MAX_ENTRIES => {
                    Err(format!("{}: more than {MAX_ENTRIES} entries", self.key(k)))
                }
                Some(a) => Ok(a.as_slice()),
                None => Err(format!("{}: expected a list", self.key(k))),
            },
        }
    }

    pub fn strings(&mut self, k: &'static str) -> Result<Vec<String>, String> {
        let key = self.key(k);
        self.array(k)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key}: expected a list of strings"))
            })
            .collect()
    }

    /// Marks keys as known-but-ignored with a reason (warning).
    pub fn ignore(&mut self, k: &'static str, why: &str, warnings: &mut Vec<String>) {
        self.handled.push(k);
        if self.obj.contains_key(k) {
            warnings.push(format!("{}: ignored ({why})", self.key(k)));
        }
    }

    /// Keys present that would be unsafe to ignore: errors.
    pub fn refuse(&mut self, k: &'static str, why: &str) -> Result<(), String> {
        self.handled.push(k);
        match self.obj.get(k) {
            Some(v) if !is_empty(v) => Err(format!("{}: not supported ({why})", self.key(k))),
            _ => Ok(()),
        }
    }

    /// Reports every key not handled as a warning naming it.
    pub fn finish(self, warnings: &mut Vec<String>) {
        for k in self.obj.keys() {
            if !self.handled.contains(&k.as_str()) {
                warnings.push(format!("{}: unknown key, ignored", self.key(k)));
            }
        }
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn display_path(p: &str) -> &str {
    if p.is_empty() {
        "top level"
    } else {
        p
    }
}

/// Decodes base64 (standard alphabet, padding optional, whitespace ignored).
pub(crate) fn decode_base64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(clean.as_bytes()).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(o, _)
            | base64::DecodeError::InvalidLastSymbol(o, _) => {
                format!(" (bad character at offset {o})")
            }
            base64::DecodeError::InvalidLength(_) => " (truncated)".to_string(),
            base64::DecodeError::InvalidPadding => " (bad padding)".to_string(),
        };
        format!("{what}: not valid base64{at}; give standard base64 text")
    })
}

/// Gunzips with an output limit (a small gzip member can expand enormously).
pub(crate) fn gunzip(what: &str, data: &[u8], budget: &mut usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let limit = *budget as u64 + 1;
    flate2::read::MultiGzDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("{what}: invalid gzip data: {e}"))?;
    if out.len() as u64 >= limit {
        return Err(format!(
            "{what}: decompressed contents exceed the limit of {MAX_DECODED_BYTES} bytes for all files"
        ));
    }
    Ok(out)
}

/// Charges decoded bytes against the per-config budget.
pub(crate) fn charge(what: &str, n: usize, budget: &mut usize) -> Result<(), String> {
    if n > *budget {
        return Err(format!(
            "{what}: file contents exceed the limit of {MAX_DECODED_BYTES} bytes for all files"
        ));
    }
    *budget -= n;
    Ok(())
}

/// Parses a mode given as an octal string (`"0644"`, `"644"`) or a number, range-checked
/// before any narrowing (2^32 + 0o4755 must not become 0o4755).
pub(crate) fn parse_mode(
    what: &str,
    v: &serde_json::Value,
    decimal_numbers: bool,
) -> Result<u32, String> {
    let bad = |shown: &str| {
        if decimal_numbers {
            format!("{what}: {shown} is not a mode; it must be 0..4095 (0o7777), e.g. 420 for 0644")
        } else {
            format!("{what}: {shown} is not a mode; give an octal mode up to 07777, e.g. '0644'")
        }
    };
    let m: u64 = match v {
        serde_json::Value::String(s) => {
            let digits = s.trim().trim_start_matches("0o");
            if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(bad(&format!("{s:?}")));
            }
            u64::from_str_radix(digits, 8).map_err(|_| bad(&format!("{s:?}")))?
        }
        serde_json::Value::Number(n) => {
            let n = n.as_u64().ok_or_else(|| bad(&n.to_string()))?;
            if decimal_numbers {
                n
            } else {
                // YAML wrote 644 meaning octal 0644: reinterpret the decimal digits as octal.
                u64::from_str_radix(&n.to_string(), 8).map_err(|_| bad(&n.to_string()))?
            }
        }
        _ => return Err(format!("{what}: expected a mode, e.g. 420 for 0644")),
    };
    if m > 0o7777 {
        return Err(bad(&v.to_string()));
    }
    Ok(m as u32)
}

/// A YAML parser error in our words: what is wrong and where, never the parser's internals.
pub(crate) fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let low = text.to_ascii_lowercase();
    let what = if low.contains("document") {
        "the stream holds more than one YAML document; give exactly one".to_string()
    } else if low.contains("budget") || low.contains("alias") || low.contains("anchor") {
        "the document is too complex (too many aliases, anchors, events or nesting levels)"
            .to_string()
    } else if low.contains("duplicate") {
        "a key appears twice in the same mapping; keep one".to_string()
    } else if low.contains("binary") {
        "a !!binary value is not valid base64".to_string()
    } else {
        // The first clause of the parser's message, without its option names or structures.
        let first = text.lines().next().unwrap_or("").trim();
        let cut = first
            .find(['{', '('])
            .map(|i| &first[..i])
            .unwrap_or(first)
            .trim_end_matches([' ', ':', ',']);
        let cut = cut.split(" at line").next().unwrap_or(cut);
        if cut.is_empty() || cut.contains("Options") {
            "invalid YAML".to_string()
        } else if [
            "unknown field",
            "missing field",
            "invalid type",
            "invalid value",
        ]
        .iter()
        .any(|p| cut.starts_with(p))
        {
            // A schema error, not a syntax error: serde's words name the key already.
            cut.replacen("field", "key", 1)
        } else {
            format!("invalid YAML: {cut}")
        }
    };
    match e.location() {
        Some(l) => format!("{what} (line {}, column {})", l.line(), l.column()),
        None => what,
    }
}
