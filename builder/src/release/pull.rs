//! `release pull`: downloads a release's checksum list, bundle and image parts, verifying
//! every file while it streams, resuming partial downloads and retrying with backoff.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::http::{Client, Url};
use super::{
    check_version, file_url, wanted_files, Cache, CachedRelease, Origin, ReleaseError, SUMS_FILE,
};
use crate::payload::artifacts::Checksums;

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Release location; files are at `<base>/<version, + as %2B>/<file>`.
    pub base_url: String,
    /// Image parts to fetch besides the bundle (see [`super::parse_parts`]).
    pub parts: Vec<String>,
    /// Further attempts after a connection error, a 5xx/429 answer or a cut transfer.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    pub client: Arc<Client>,
}

/// What a pull reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// Already cached (content-addressed), not downloaded.
    Cached { name: String },
    Start {
        name: String,
        url: String,
        resume_from: u64,
        total: Option<u64>,
    },
    /// Bytes so far of the file (including a resumed prefix); about four per second.
    Progress {
        name: String,
        done: u64,
        total: Option<u64>,
        rate: f64,
    },
    Done {
        name: String,
        size: u64,
        secs: f64,
        resumed_from: u64,
    },
    Retry {
        name: String,
        attempt: u32,
        wait: Duration,
        error: String,
    },
}

impl Event {
    pub fn is_progress(&self) -> bool {
        matches!(self, Event::Progress { .. })
    }
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Cached { name } => write!(f, "{name}: already cached"),
            Event::Start {
                name,
                url,
                resume_from,
                ..
            } if *resume_from > 0 => write!(f, "{name}: resuming at byte {resume_from} from {url}"),
            Event::Start { name, url, .. } => write!(f, "{name}: fetching {url}"),
            Event::Progress {
                name,
                done,
                total,
                rate,
            } => match total {
                Some(t) => write!(
                    f,
                    "{name}: {:.1}/{:.1} MiB {:.1} MiB/s",
                    mib(*done),
                    mib(*t),
                    mib(*rate as u64)
                ),
                None => write!(
                    f,
                    "{name}: {:.1} MiB {:.1} MiB/s",
                    mib(*done),
                    mib(*rate as u64)
                ),
            },
            Event::Done {
                name,
                size,
                secs,
                resumed_from,
            } => {
                let got = size - resumed_from;
                write!(
                    f,
                    "{name}: {size} bytes, sha256 verified ({:.1} MiB in {secs:.1}s, {:.1} MiB/s{})",
                    mib(got),
                    mib(got) / secs.max(0.001),
                    if *resumed_from > 0 {
                        format!(", resumed at byte {resumed_from}")
                    } else {
                        String::new()
                    }
                )
            }
            Event::Retry {
                name,
                attempt,
                wait,
                error,
            } => write!(
                f,
                "{name}: attempt {attempt} failed ({error}); retrying in {:.1}s",
                wait.as_secs_f64()
            ),
        }
    }
}

/// Whether another attempt may help.
fn retryable(e: &ReleaseError) -> bool {
    match e {
        ReleaseError::Http(_) | ReleaseError::Truncated { .. } => true,
        ReleaseError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 416,
        _ => false,
    }
}

fn with_retries<T>(
    opts: &PullOptions,
    name: &str,
    ev: &mut dyn FnMut(Event),
    mut f: impl FnMut(&mut dyn FnMut(Event)) -> Result<T, ReleaseError>,
) -> Result<T, ReleaseError> {
    let mut attempt = 0;
    loop {
        match f(ev) {
            Err(e) if attempt < opts.retries && retryable(&e) => {
                let wait = opts.backoff.saturating_mul(1 << attempt.min(16));
                attempt += 1;
                ev(Event::Retry {
                    name: name.to_string(),
                    attempt,
                    wait,
                    error: e.to_string(),
                });
                std::thread::sleep(wait);
            }
            r => return r,
        }
    }
}

fn status_error(name: &str, url: &str, status: u16) -> ReleaseError {
    ReleaseError::Status {
        name: name.to_string(),
        url: url.to_string(),
        status,
        hint: match status {
            404 => " (no such file: check the version, the part names and --url)",
            401 | 403 => " (access denied: check the mirror's permissions)",
            _ => "",
        },
    }
}

/// The checksum list, into memory.
fn fetch_sums(opts: &PullOptions, version: &str) -> Result<String, ReleaseError> {
    let url = file_url(&opts.base_url, version, SUMS_FILE);
    let mut text = Vec::new();
    with_retries(opts, SUMS_FILE, &mut |_| {}, |_| {
        let r = opts.client.get(&url, None)?;
        if r.status != 200 {
            return Err(status_error(SUMS_FILE, &url, r.status));
        }
        text.clear();
        r.take(4 << 20)
            .read_to_end(&mut text)
            .map_err(|e| ReleaseError::Truncated {
                name: SUMS_FILE.into(),
                url: url.clone(),
                got: text.len() as u64,
                total: "unknown".into(),
                detail: e.to_string(),
            })?;
        Ok(())
    })?;
    String::from_utf8(text)
        .map_err(|_| ReleaseError::Checksums(format!("{url}: {SUMS_FILE} is not text")))
}

fn hash_prefix(path: &Path) -> Result<(Sha256, u64), ReleaseError> {
    let mut h = Sha256::new();
    let mut n = 0;
    match fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = f.read(&mut buf).map_err(ReleaseError::io(path))?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ReleaseError::io(path)(e)),
    }
    Ok((h, n))
}

/// One attempt at one file: resume from the partial file if there is one, stream into it while
/// hashing, and move it to its blob name only when the whole file matched.
fn fetch_once(
    cache: &Cache,
    opts: &PullOptions,
    name: &str,
    url: &str,
    expected: &str,
    ev: &mut dyn FnMut(Event),
) -> Result<(), ReleaseError> {
    let part = cache.partial(expected);
    let (mut hasher, mut have) = hash_prefix(&part)?;
    let mut resp = opts.client.get(url, (have > 0).then_some(have))?;
    let shown = resp.url.clone();
    match resp.status {
        206 if have > 0 => {
            let start = resp
                .header("content-range")
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                // Not the range asked for: start over on the next attempt.
                let _ = fs::remove_file(&part);
                return Err(status_error(name, &shown, 416));
            }
        }
        200 => {
            hasher = Sha256::new();
            have = 0;
        }
        416 => {
            // The partial file is not a prefix the server knows: start over.
            let _ = fs::remove_file(&part);
            return Err(status_error(name, &shown, 416));
        }
        s => return Err(status_error(name, &shown, s)),
    }
    let total = resp.content_length().map(|n| n + have);
    ev(Event::Start {
        name: name.into(),
        url: url.into(),
        resume_from: have,
        total,
    });
    let mut f = OpenOptions::new()
        .create(true)
        .append(have > 0)
        .write(true)
        .truncate(have == 0)
        .open(&part)
        .map_err(ReleaseError::io(&part))?;
    let started = Instant::now();
    let mut last = started;
    let mut done = have;
    let mut buf = vec![0u8; 256 * 1024];
    let cut = |done: u64, e: io::Error| ReleaseError::Truncated {
        name: name.into(),
        url: shown.clone(),
        got: done,
        total: total.map_or("unknown".into(), |t| t.to_string()),
        detail: e.to_string(),
    };
    loop {
        let k = match resp.read(&mut buf) {
            Ok(k) => k,
            Err(e) => {
                let _ = f.sync_all();
                return Err(cut(done, e));
            }
        };
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        f.write_all(&buf[..k]).map_err(ReleaseError::io(&part))?;
        done += k as u64;
        if last.elapsed() >= Duration::from_millis(250) {
            last = Instant::now();
            ev(Event::Progress {
                name: name.into(),
                done,
                total,
                rate: (done - have) as f64 / started.elapsed().as_secs_f64().max(0.001),
            });
        }
    }
    drop(f);
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let _ = fs::remove_file(&part);
        return Err(ReleaseError::Mismatch {
            name: name.into(),
            url: shown,
            expected: expected.into(),
            actual,
        });
    }
    cache.commit_blob(&part, expected)?;
    ev(Event::Done {
        name: name.into(),
        size: done,
        secs: started.elapsed().as_secs_f64(),
        resumed_from: have,
    });
    Ok(())
}

/// Pulls `version` (the bundle plus `opts.parts`) into the cache and returns the release.
pub fn pull(
    cache: &Cache,
    version: &str,
    opts: &PullOptions,
    ev: &mut dyn FnMut(Event),
) -> Result<CachedRelease, ReleaseError> {
    check_version(version)?;
    let base = Url::parse(&opts.base_url)?;
    // Recorded without credentials.
    let origin = base.display();
    let origin = origin.trim_end_matches('/').to_string();
    cache.ensure_dirs()?;
    let sums_text = fetch_sums(opts, version)?;
    let sums_url = file_url(&opts.base_url, version, SUMS_FILE);
    let sums = Checksums::parse(Path::new(""), Path::new(&sums_url), &sums_text)
        .map_err(|e| ReleaseError::Checksums(e.to_string()))?;
    let names = wanted_files(&sums, &opts.parts, &origin, version)?;
    let mut got = Vec::new();
    for name in &names {
        let expected = sums
            .expected(name)
            .map_err(|e| ReleaseError::Checksums(e.to_string()))?
            .to_string();
        if cache.blob(&expected).is_file() {
            ev(Event::Cached { name: name.clone() });
        } else {
            let url = file_url(&opts.base_url, version, name);
            with_retries(opts, name, ev, |ev| {
                fetch_once(cache, opts, name, &url, &expected, ev)
            })?;
        }
        got.push((name.clone(), Origin::Url(origin.clone())));
    }
    cache.register(version, &sums_text, &got)
}
