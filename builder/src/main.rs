//! `rke2-image` command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rke2_image::tree::Tree;
use rke2_image::{archive, base, definition::Definition, inspect, kernel_check, pipeline};

mod release_cli;

#[derive(Parser)]
#[command(
    name = "rke2-image",
    version,
    about = "Build bootable, immutable, dm-verity protected RKE2 node images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a disk image from a definition (images/*.yaml).
    Build {
        definition: PathBuf,
        /// Overrides the definition's output.directory.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Outputs to publish, comma-separated (raw, qcow2, iso, pxe, update);
        /// replaces the definition's output.formats.
        #[arg(long, value_name = "FORMATS")]
        format: Option<String>,
        /// Where built bases are cached (default: $RKE2_IMAGE_CACHE, $XDG_CACHE_HOME/rke2-image or ~/.cache/rke2-image).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Build even if the rke2 binary was not built with BoringCrypto (FIPS on): a warning
        /// in the manifest instead of a failed build.
        #[arg(long)]
        allow_non_fips_supervisor: bool,
        /// Never download: an `rke2: {version: ...}` release must already be in the release cache.
        #[arg(long)]
        offline: bool,
        /// Release location for a release that is not cached (default: the official one).
        #[arg(long)]
        release_url: Option<String>,
        /// Use the release in this directory (version read from its image lists) instead of
        /// the definition's `rke2` version/artifacts: to try a definition with a carried or
        /// sample release without importing it.
        #[arg(long)]
        release_dir: Option<PathBuf>,
    },
    /// Download, import and list RKE2 releases in the release cache.
    #[command(subcommand)]
    Release(release_cli::ReleaseCommand),
    /// Check a kernel configuration (a config file, or a base tarball's boot/config-*)
    /// against the options the images need (kernel-config/).
    KernelCheck { config: PathBuf },
    /// Build (or reuse from the cache) a Debian base root filesystem tarball with mmdebstrap.
    Base {
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror URL (default: mmdebstrap's).
        #[arg(long)]
        mirror: Option<String>,
        /// Extra package (repeatable).
        #[arg(long = "package")]
        packages: Vec<String>,
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// SOURCE_DATE_EPOCH for the base (default: the fixed epoch builds use, so they share the cache).
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Show an image's partition table, root hash, loader entries and embedded manifest,
    /// or an update bundle's header and members (each checked against update.json).
    Inspect {
        image: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Secure Boot keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign an image's manifest (ed25519) in place, and the published manifest next to it.
    Sign {
        image: PathBuf,
        /// ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check an image offline against its signed manifest: GPT, dm-verity tree and root
    /// hash, ESP files, UKI command lines, signature; or an update bundle: its signature and
    /// every member. Exit 1 with one line per finding.
    Verify {
        image: PathBuf,
        /// ed25519 public key, PEM (`openssl pkey -pubout`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Work on an `iso` output: embed a node configuration into a copy, show what is embedded.
    #[command(subcommand)]
    Iso(IsoCommand),
}

#[derive(Subcommand)]
enum IsoCommand {
    /// Write a copy of IN with a node configuration embedded (the agent reads it on a live
    /// boot; per-machine fw_cfg, URL and config drives still come first).
    Customize {
        #[arg(value_name = "IN")]
        input: PathBuf,
        /// The configuration (native cluster/node config, Ignition or #cloud-config); checked
        /// as the agent will.
        #[arg(long, required_unless_present = "remove", conflicts_with = "remove")]
        config: Option<PathBuf>,
        /// Embed nothing: the copy's area is empty again, as built.
        #[arg(long)]
        remove: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Replace OUT if it exists (OUT may then be IN: rewritten through a temporary).
        #[arg(long)]
        force: bool,
    },
    /// Print the configuration embedded in an ISO (nothing, and a note on stderr, when empty).
    ShowConfig {
        #[arg(value_name = "IN")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create PK, KEK and db keys and certificates with their EFI signature lists and signed
    /// .auth updates for enrollment (db.key/db.crt go into security.secureBoot).
    Generate {
        dir: PathBuf,
        /// Common name prefix of the certificates.
        #[arg(long, default_value = "rke2-image")]
        name: String,
    },
}

fn cache_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = arg {
        return Ok(d);
    }
    if let Some(d) = std::env::var_os("RKE2_IMAGE_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(Path::new(&d).join("rke2-image"));
    }
    let home = std::env::var_os("HOME").context("no --cache-dir given and HOME is not set")?;
    Ok(Path::new(&home).join(".cache/rke2-image"))
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            let n: u64 = v.trim().parse().ok().with_context(|| {
                format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")
            })?;
            if n > rke2_image::definition::EPOCH_MAX {
                anyhow::bail!(
                    "SOURCE_DATE_EPOCH={n} is after 2106-02-07; the initrd and ESP store times up to {}",
                    rke2_image::definition::EPOCH_MAX
                );
            }
            Ok(Some(n))
        }
        Err(_) => Ok(None),
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Build {
            definition,
            output,
            format,
            cache_dir: cd,
            allow_non_fips_supervisor,
            offline,
            release_url,
            release_dir,
        } => {
            let mut def = Definition::load(&definition)?;
            if let Some(list) = format {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                def.output.formats = rke2_image::definition::parse_formats(&names)
                    .map_err(|(i, m)| anyhow::anyhow!("--format {list}: value {}: {m}", i + 1))?;
            }
            release_cli::resolve(
                &mut def,
                &cache_dir(cd.clone())?,
                offline,
                release_url,
                release_dir.as_deref(),
            )?;
            let exe = std::env::current_exe().context("locating rke2-image")?;
            let opts = pipeline::BuildOptions {
                cache_dir: cache_dir(cd)?,
                output_dir: output,
                source_date_epoch: source_date_epoch()?,
                programs_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
                allow_non_fips_supervisor,
            };
            let r = pipeline::build(&def, &opts, &mut |line| eprintln!("{line}"))?;
            let total: f64 = r.timings.iter().map(|t| t.1.as_secs_f64()).sum();
            let stages: Vec<String> = r
                .timings
                .iter()
                .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
                .collect();
            eprintln!("built in {total:.1}s ({})", stages.join(", "));
            for p in &r.published {
                println!("{}", p.display());
            }
        }
        Command::Base {
            suite,
            mirror,
            packages,
            cache_dir: cd,
            epoch,
        } => {
            let epoch = epoch.unwrap_or(base::DEFAULT_EPOCH);
            let mut req = base::BaseRequest::debian_default(epoch);
            req.suite = suite;
            req.mirror = mirror;
            req.packages.extend(packages);
            let r = base::ensure(&req, &cache_dir(cd)?)?;
            eprintln!(
                "{} base {} (sha256 {}, {} MiB)",
                if r.reused { "reused" } else { "built" },
                r.key,
                r.sha256,
                r.size / (1024 * 1024)
            );
            println!("{}", r.path.display());
        }
        Command::Release(c) => release_cli::run(c, cache_dir)?,
        Command::KernelCheck { config } => {
            let text = if archive::looks_like_archive(&config) {
                let mut tree = Tree::new(0);
                archive::load(&config, &mut tree)?;
                let (name, text) = kernel_check::config_from_tree(&tree)?;
                eprintln!("checking {name} from {}", config.display());
                text
            } else {
                let bytes = rke2_image::limits::read_host_file(
                    &config,
                    rke2_image::limits::KERNEL_CONFIG,
                    "kernel configuration",
                )
                .map_err(|m| anyhow::anyhow!("{}: {m}", config.display()))?;
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let report = kernel_check::check(&text, &kernel_check::builtin_fragments()?);
            print!("{report}");
            if !report.is_ok() {
                anyhow::bail!(
                    "{}: {} required kernel option(s) missing",
                    config.display(),
                    report.missing().len()
                );
            }
        }
        Command::Keys(KeysCommand::Generate { dir, name }) => {
            let g = rke2_image::secureboot::generate(&dir, &name)?;
            for f in g.files {
                println!("{}", f.display());
            }
        }
        Command::Sign { image, key } => {
            let k = rke2_image::sign::load_private(&key, "--key")?;
            let r = rke2_image::sign::sign_image(&image, &k)?;
            eprintln!("signed {}", image.display());
            if let Some((m, s)) = r.published {
                eprintln!("wrote {} and {}", m.display(), s.display());
            }
        }
        Command::Verify { image, key, json } if inspect::is_bundle(&image) => {
            let k = rke2_image::sign::load_public(&key, "--key")?;
            let report = inspect::inspect_bundle(&image, Some(&k))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_bundle(&report));
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{}: {} problem(s); the bundle does not match its signed update.json",
                    image.display(),
                    report.problems.len()
                );
            }
        }
        Command::Verify { image, key, json } => {
            let k = rke2_image::sign::load_public(&key, "--key")?;
            let report = rke2_image::verify::verify_path(&image, Some(&k))
                .context("cannot read the image")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report.checked {
                    println!("ok: {c}");
                }
                for f in &report.findings {
                    println!("FAIL: {f}");
                }
            }
            if !report.ok() {
                anyhow::bail!(
                    "{}: {} finding(s); the image does not match its signed manifest",
                    image.display(),
                    report.findings.len()
                );
            }
        }
        Command::Iso(c) => iso(c)?,
        Command::Inspect { image, json } if inspect::is_bundle(&image) => {
            let report = inspect::inspect_bundle(&image, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render_bundle(&report));
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{}: {} problem(s) found",
                    image.display(),
                    report.problems.len()
                );
            }
        }
        Command::Inspect { image, json } => {
            let report = inspect::inspect(&image)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render(&report));
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{}: {} problem(s) found",
                    image.display(),
                    report.problems.len()
                );
            }
        }
    }
    Ok(())
}

fn iso(c: IsoCommand) -> Result<()> {
    use rke2_image::iso_customize::{self as cz, Payload};
    match c {
        IsoCommand::Customize {
            input,
            config,
            remove,
            output,
            force,
        } => {
            let bytes = match &config {
                Some(p) if !remove => cz::read_config(p)?,
                _ => Vec::new(),
            };
            let payload = match &config {
                Some(p) if !remove => Payload::Config(p, &bytes),
                _ => Payload::Empty,
            };
            for w in cz::customize(&input, payload, &output, force)? {
                eprintln!("warning: {w}");
            }
            println!("{}", output.display());
        }
        IsoCommand::ShowConfig { input } => match cz::read(&input)?.1 {
            Some(b) => {
                use std::io::Write;
                std::io::stdout().write_all(&b)?;
            }
            None => eprintln!("{}: the embed area is empty", input.display()),
        },
    }
    Ok(())
}

/// The error and its causes joined with `: `, leaving out a cause whose text the message
/// already carries (many errors embed their source), so nothing is printed twice.
fn chain_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain_once(&e));
            ExitCode::FAILURE
        }
    }
}
