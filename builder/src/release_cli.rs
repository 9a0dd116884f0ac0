//! `rke2-image release ...` and the build's release lookup: argument handling and progress
//! display over [`rke2_image::release`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use rke2_image::definition::Definition;
use rke2_image::release::{self, http, pull, Cache};

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Download a release into the cache, verifying every file against its sha256sum-amd64.txt.
    Pull {
        /// e.g. v1.33.5+rke2r1
        version: String,
        /// Image parts besides the bundle, comma separated (`all` for every part).
        #[arg(long, value_delimiter = ',', default_values_t = release::DEFAULT_PARTS.iter().map(|s| s.to_string()))]
        parts: Vec<String>,
        /// Release location: files are fetched from URL/<version>/<file>.
        #[arg(long, default_value = release::DEFAULT_BASE_URL)]
        url: String,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Further attempts after a network error, a 5xx answer or a cut transfer.
        #[arg(long, default_value_t = 4)]
        retries: u32,
    },
    /// Put a release directory (carried into an air-gapped site) into the cache, verified.
    Import {
        dir: PathBuf,
        /// The release version (default: read from the rke2-runtime image in the image lists).
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Show the cached releases.
    List {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

fn options(url: String, parts: Vec<String>, retries: u32) -> pull::PullOptions {
    pull::PullOptions {
        base_url: url,
        parts,
        retries,
        backoff: Duration::from_secs(2),
        client: Arc::new(http::Client::new(http::Proxies::from_env(), None)),
    }
}

/// Progress: a line rewritten in place on a terminal, one line per file otherwise.
fn reporter() -> impl FnMut(pull::Event) {
    let tty = std::io::stderr().is_terminal();
    move |e: pull::Event| {
        let mut err = std::io::stderr();
        if e.is_progress() {
            if tty {
                let _ = write!(err, "\r\x1b[K{e}");
                let _ = err.flush();
            }
        } else if tty {
            let _ = writeln!(err, "\r\x1b[K{e}");
        } else if !matches!(e, pull::Event::Start { .. }) {
            let _ = writeln!(err, "{e}");
        }
    }
}

pub fn run(
    c: ReleaseCommand,
    cache_dir: impl Fn(Option<PathBuf>) -> Result<PathBuf>,
) -> Result<()> {
    match c {
        ReleaseCommand::Pull {
            version,
            parts,
            url,
            cache_dir: cd,
            retries,
        } => {
            let cache = Cache::new(&cache_dir(cd)?);
            let opts = options(url, release::parse_parts(&parts)?, retries);
            let r = pull::pull(&cache, &version, &opts, &mut reporter())?;
            eprintln!(
                "{} cached: {} files, {} bytes, from {}",
                r.version,
                r.files.len(),
                r.size(),
                r.origin_summary()
            );
            println!("{}", r.dir.display());
        }
        ReleaseCommand::Import {
            dir,
            version,
            cache_dir: cd,
        } => {
            let cache = Cache::new(&cache_dir(cd)?);
            let r = release::import::import(&cache, &dir, version.as_deref(), &mut |l| {
                eprintln!("{l}")
            })?;
            eprintln!(
                "{} imported: {} files, {} bytes",
                r.version,
                r.files.len(),
                r.size()
            );
            println!("{}", r.dir.display());
        }
        ReleaseCommand::List { cache_dir: cd } => {
            let cache = Cache::new(&cache_dir(cd)?);
            for r in cache.list()? {
                let mut parts: Vec<&str> = release::PARTS_FOR_LIST
                    .iter()
                    .copied()
                    .filter(|p| {
                        let (list, tars) = release::part_files(p);
                        r.files.contains_key(&list) && tars.iter().any(|t| r.files.contains_key(t))
                    })
                    .collect();
                if parts.is_empty() {
                    parts.push("-");
                }
                println!(
                    "{}\tparts {}\t{} MiB\t{}",
                    r.version,
                    parts.join(","),
                    r.size() / (1024 * 1024),
                    r.origin_summary()
                );
            }
        }
    }
    Ok(())
}

/// Points the definition's `rke2: {version: ...}` (without `artifacts:`) at the release cache,
/// pulling a missing release unless `offline`.
pub fn resolve(
    def: &mut Definition,
    cache_dir: &std::path::Path,
    offline: bool,
    url: Option<String>,
    release_dir: Option<&std::path::Path>,
) -> Result<()> {
    let file = def.file.display().to_string();
    let Some(spec) = def.rke2.as_mut() else {
        if let Some(d) = release_dir {
            anyhow::bail!(
                "--release-dir {}: {file} has no `rke2:` section",
                d.display()
            );
        }
        return Ok(());
    };
    if let Some(d) = release_dir {
        let v = release::import::use_directory(spec, d)?;
        eprintln!(
            "rke2: using release {v} from {} (--release-dir)",
            d.display()
        );
        return Ok(());
    }
    let cache = Cache::new(cache_dir);
    let opts = options(
        url.unwrap_or_else(|| release::DEFAULT_BASE_URL.to_string()),
        Vec::new(),
        4,
    );
    let fetch = if offline {
        release::Fetch::Offline
    } else {
        release::Fetch::Pull(&opts)
    };
    release::resolve(spec, &cache, fetch, &mut |l| eprintln!("{l}"))
        .map_err(|e| anyhow::anyhow!("{file}: rke2.version: {e}"))?;
    Ok(())
}
