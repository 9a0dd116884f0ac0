//! The `rke2-update` command line (also `rke2-firstboot update`). Thin: the work is in
//! `rke2_firstboot::update`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rke2_firstboot::update::{self, apply, health, rollback, status, Roots};

#[derive(Parser)]
#[command(
    name = "rke2-update",
    version,
    about = "A/B updates of an rke2-image node installed on a disk",
    long_about = "A/B updates of an rke2-image node installed on a disk.\\n\\n\\
        The node has two root slots (a, b). `apply` writes a signed update bundle into the slot \\
        that is not running and makes it boot next with a boot counter; the new slot is blessed \\
        only when rke2-update-health.service finds RKE2 healthy, otherwise systemd-boot falls \\
        back to the previous slot after the tries are used up."
)]
pub struct UpdateCli {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Verify a signed bundle (<name>-<version>.update) and write it into the inactive slot.
    ///
    /// SOURCE is a file, a block device or an http:// or https:// URL (streamed, never stored).
    /// Plain http is accepted: the ed25519 signature over update.json, which pins every
    /// member's sha256, is what protects the bundle, not the transport. The signature must
    /// verify against a key in /usr/share/rke2-image/update/keys; the bundle must be for this
    /// image and architecture and newer than the running version. Nothing about the running
    /// slot changes until the new slot is written and verified through dm-verity.
    Apply {
        source: String,
        /// Reboot into the new slot when done.
        #[arg(long)]
        reboot: bool,
        /// Accept a bundle older than the running version (marks the running entry bad so
        /// the older one boots).
        #[arg(long)]
        allow_downgrade: bool,
        /// CA bundle (PEM) for an https:// source; default: the system's
        /// /etc/ssl/certs/ca-certificates.crt.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Show the running slot, both slots' entries and the last update's result.
    Status {
        /// A stable JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Make the other (good) slot boot next.
    Rollback {
        /// Reboot into it now.
        #[arg(long)]
        reboot: bool,
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// The boot health gate (run by rke2-update-health.service).
    Health {
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
}

fn reboot() {
    let _ = std::process::Command::new("systemctl")
        .args(["--no-block", "reboot"])
        .status();
}

fn err(e: String) -> ExitCode {
    eprintln!("rke2-update: error: {e}");
    ExitCode::FAILURE
}

pub fn main(verb: Verb) -> ExitCode {
    match verb {
        Verb::Apply {
            source,
            reboot: then_reboot,
            allow_downgrade,
            ca_file,
            root,
        } => {
            let roots = Roots::system(&root);
            let mut src = match update::source::open(&source, ca_file.as_deref()) {
                Ok(s) => s,
                Err(e) => return err(e),
            };
            let opts = apply::Options { allow_downgrade };
            let mut say = |m: &str| println!("rke2-update: {m}");
            match apply::apply(&roots, &mut src, &source, &opts, &apply::DmVerity, &mut say) {
                Ok(done) => {
                    println!("rke2-update: {}", done.summary());
                    if then_reboot {
                        reboot();
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => err(e),
            }
        }
        Verb::Status { json, root } => match status::status(&Roots::system(&root)) {
            Ok(s) if json => match serde_json::to_string_pretty(&s) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => err(e.to_string()),
            },
            Ok(s) => {
                print!("{}", status::human(&s));
                ExitCode::SUCCESS
            }
            Err(e) => err(e),
        },
        Verb::Rollback {
            reboot: then_reboot,
            root,
        } => match rollback::rollback(&Roots::system(&root)) {
            Ok(m) => {
                println!("rke2-update: {m}");
                if then_reboot {
                    reboot();
                }
                ExitCode::SUCCESS
            }
            Err(e) => err(e),
        },
        Verb::Health { root } => {
            let sys = health::Systemd {
                start: std::time::Instant::now(),
            };
            let mut say = |m: &str| println!("rke2-update-health: {m}");
            match health::run(&Roots::system(&root), &sys, &mut say) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("rke2-update-health: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
