//! `rke2-firstboot`: the first-boot node agent. Thin: the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rke2_firstboot::agent::{self, AgentError, RunEnv, RunOutcome};
use rke2_firstboot::atomic::Root;
use rke2_firstboot::identity::Identity;
use rke2_firstboot::network;
use rke2_firstboot::preflight::Backoff;
use rke2_firstboot::render::{Phase, RenderError};
use rke2_firstboot::sources::fw_cfg::{self, FwCfg, PauseKnob};
use rke2_firstboot::sources::{
    baked::Baked, cmdline_url::CmdlineUrl, config_drive::ConfigDrive, esp::Esp, medium::Medium,
    Found, Source, SystemMounter,
};

/// How long `run` waits for a static address to show up before the join preflight (which
/// retries on its own, so this only makes the console tell a clearer story).
const NETWORK_WAIT: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(
    name = "rke2-firstboot",
    version,
    about = "First-boot node agent of rke2-image"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Configure this node (the systemd service).
    Run {
        /// Root of the node (for tests; the service uses /).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Render a configuration into DIR: everything `run` does except network waits and
    /// starting services.
    Render {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        root: PathBuf,
        /// This machine's identity: mac=..,uuid=..,serial=..,hostname=.. (repeatable).
        #[arg(long)]
        identity: Vec<String>,
    },
    /// Check a configuration: prints errors and warnings, exits 0 when usable. With --root,
    /// also the checks that need the target root (the same ones render runs first).
    Validate {
        file: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Show whether first boot completed, or why it failed.
    Status {
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// A/B updates (the same as `rke2-update <verb>`).
    Update {
        #[command(subcommand)]
        verb: update_cli::Verb,
    },
}

mod update_cli;

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    // Outside systemd (no NOTIFY_SOCKET) this is a no-op.
    let _ = sd_notify::notify(false, state);
}

fn read_config(path: &PathBuf) -> Result<Vec<u8>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if md.len() > rke2_firstboot::dialects::MAX_CONFIG_BYTES as u64 {
        return Err(format!(
            "{}: {} bytes, more than the limit of {} bytes",
            path.display(),
            md.len(),
            rke2_firstboot::dialects::MAX_CONFIG_BYTES
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    // Installed as /usr/bin/rke2-update -> rke2-firstboot too.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "rke2-update")
    {
        return update_cli::main(update_cli::UpdateCli::parse().verb);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Update { verb } => update_cli::main(verb),
        Cmd::Validate { file, root } => {
            let bytes = match read_config(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let root = root.map(Root::new);
            match agent::validate(&file.display().to_string(), &bytes, root.as_ref()) {
                Ok(warnings) => {
                    for w in &warnings {
                        println!("warning: {w}");
                    }
                    if root.is_none() {
                        println!(
                            "note: not checked without --root DIR: {}",
                            rke2_firstboot::render::ROOT_CHECKS
                        );
                    }
                    println!("{}: ok ({} warnings)", file.display(), warnings.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Render {
            config,
            root,
            identity,
        } => {
            let r = (|| -> Result<(), String> {
                let id = Identity::from_args(&identity).map_err(|e| e.to_string())?;
                let bytes = read_config(&config)?;
                let found = Found {
                    origin: config.display().to_string(),
                    bytes,
                    meta_hostname: None,
                };
                let loaded = agent::load(&found, &id).map_err(|e| e.to_string())?;
                for w in &loaded.plan.warnings {
                    eprintln!("warning: {w}");
                }
                // Test hook: simulate a crash right before a phase.
                let abort = std::env::var("RKE2_FIRSTBOOT_ABORT_BEFORE").ok();
                let mut hook = |p: Phase| -> Result<(), RenderError> {
                    if abort.as_deref() == Some(p.name()) {
                        std::process::exit(86);
                    }
                    Ok(())
                };
                agent::render_to(&Root::new(&root), &loaded, &mut hook).map_err(|e| e.to_string())
            })();
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { root } => match agent::status(&Root::new(root)) {
            Ok((ok, text)) => {
                println!("{text}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { root } => run(root),
    }
}

fn run(root: PathBuf) -> ExitCode {
    let sys = PathBuf::from("/sys");
    let proc = PathBuf::from("/proc");
    let dev = PathBuf::from("/dev");
    // fw_cfg is a module on the Debian kernel; without it the source sees nothing.
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "qemu_fw_cfg"])
        .status();
    // The identity (NIC MACs) and config drives (/dev/disk/by-label) come from devices udev
    // is still adding at this point of the boot (drivers load on coldplug): wait for its queue
    // to drain first, bounded so a stuck event cannot hold the node forever.
    let settled = std::process::Command::new("udevadm")
        .args(["settle", "--timeout=120"])
        .status();
    if !settled.is_ok_and(|s| s.success()) {
        println!("rke2-firstboot: warning: udevadm settle did not finish; devices may be missing");
    }
    let identity = Identity::probe(&sys, &proc);
    let mount_base = PathBuf::from("/run/rke2-firstboot");
    let sources: Vec<Box<dyn Source>> = vec![
        Box::new(CmdlineUrl::from_paths(
            &proc,
            &root,
            identity.clone(),
            Backoff::with_deadline(Duration::from_secs(300)),
        )),
        Box::new(FwCfg { sys: sys.clone() }),
        Box::new(ConfigDrive {
            dev: dev.clone(),
            mounter: Box::new(SystemMounter {
                base: mount_base.clone(),
            }),
        }),
        Box::new(Medium::from_paths(&proc, &sys, &dev)),
        Box::new(Esp {
            mounted: vec![root.join("efi"), root.join("boot/efi"), root.join("boot")],
            dev,
            mounter: Box::new(SystemMounter { base: mount_base }),
        }),
        Box::new(Baked { root: root.clone() }),
    ];
    let mut status = |m: &str| {
        println!("rke2-firstboot: {m}");
        notify(&[sd_notify::NotifyState::Status(m)]);
    };
    let pause_before = match fw_cfg::pause_knob(&sys) {
        PauseKnob::Absent => None,
        PauseKnob::Pause(p) => Some(p),
        PauseKnob::Ignored(w) => {
            status(&format!("warning: {w}"));
            None
        }
    };
    let net_sys = sys.clone();
    // Labels only matter (and restorecon only works) with SELinux enabled.
    let selinux_enabled = sys.join("fs/selinux/enforce").exists();
    // A live boot (the installation medium) may install instead of configuring itself.
    let cmdline = std::fs::read_to_string(proc.join("cmdline")).unwrap_or_default();
    let live =
        rke2_image_contract::cmdline::get(&cmdline, rke2_image_contract::cmdline::ROOT_SOURCE)
            == Some(rke2_image_contract::cmdline::ROOT_ISO);
    let env = RunEnv {
        live_cmdline: live.then(|| cmdline.clone()),
        root: root.clone(),
        sources,
        identity,
        preflight_backoff: None,
        network_apply: Some(Box::new(move |net, status| {
            network::apply(&net_sys, net, NETWORK_WAIT, status).map_err(|e| e.to_string())
        })),
        pause_before,
        relabel: selinux_enabled.then(|| Box::new(restorecon) as agent::Relabel),
    };
    match agent::run(&env, &mut status) {
        Ok(RunOutcome::Install(req)) => install(&req, &sys, &proc, &cmdline),
        Ok(RunOutcome::AlreadyDone) => {
            status("already configured (stamp present)");
            notify(&[sd_notify::NotifyState::Ready]);
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Configured { unit, also_start }) => {
            // systemd reads /etc/hostname only at boot: make the name the System phase wrote
            // the running one before RKE2 starts (it registers the node under it).
            let written = std::fs::read_to_string(root.join("etc/hostname")).unwrap_or_default();
            let name = written.trim();
            if !name.is_empty() {
                if let Err(e) = std::fs::write(proc.join("sys/kernel/hostname"), name) {
                    status(&format!("warning: setting the hostname to {name}: {e}"));
                }
            }
            // The boot transaction was computed before our links existed: reload and start
            // what we enabled. The RKE2 units are ordered after us, so their start waits.
            let _ = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status();
            for u in unit.iter().chain(also_start.iter()) {
                let _ = std::process::Command::new("systemctl")
                    .args(["start", "--no-block", u])
                    .status();
            }
            match unit {
                Some(u) => status(&format!("done; starting {u}")),
                None => status("done; no RKE2 section, no service enabled"),
            }
            notify(&[sd_notify::NotifyState::Ready]);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Installs onto a disk (`rke2_firstboot::install`), then adds the boot entry and reboots or
/// powers off. Every line goes to the console with the `rke2-install:` prefix.
fn install(
    req: &rke2_firstboot::install::InstallRequest,
    sys: &std::path::Path,
    proc: &std::path::Path,
    cmdline: &str,
) -> ExitCode {
    use rke2_firstboot::install::{efi, run, Then};
    let mut say = |m: &str| {
        println!("rke2-install: {m}");
        notify(&[sd_notify::NotifyState::Status(m)]);
    };
    say(&format!(
        "install requested: target {} (from {}), wipe {}",
        req.target, req.target_key, req.wipe
    ));
    let mountinfo = std::fs::read_to_string(proc.join("self/mountinfo")).unwrap_or_default();
    let env = run::Env {
        sys,
        dev: std::path::Path::new("/dev"),
        mountinfo: &mountinfo,
        cmdline,
    };
    let done = match run::run(req, &env, &mut say) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("FAILED: {e}"));
            say("stopped; fix the cause above and boot the installer again");
            notify(&[sd_notify::NotifyState::Ready]);
            return ExitCode::FAILURE;
        }
    };
    say(&format!(
        "INSTALLED onto {} (written: {}, {} bytes in {:.1}s, verified in {:.1}s)",
        done.disk, done.wrote, done.bytes, done.write_secs, done.verify_secs
    ));
    let mut then = req.then;
    if then == Then::Reboot {
        match efi::boot_next(&sys.join("firmware/efi/efivars"), &done) {
            Ok(n) => say(&format!(
                "UEFI boot entry Boot{n:04X} added; BootNext set to it"
            )),
            Err(e) => {
                say(&format!(
                    "warning: {e}; powering off instead of rebooting (detach the installation \
                     medium, then power on)"
                ));
                then = Then::Poweroff;
            }
        }
    }
    let verb = match then {
        Then::Reboot => "reboot",
        Then::Poweroff => "poweroff",
    };
    say(&format!("done; {verb}"));
    notify(&[sd_notify::NotifyState::Ready]);
    let _ = std::process::Command::new("systemctl")
        .args(["--no-block", verb])
        .status();
    ExitCode::SUCCESS
}

/// `restorecon -F` on the paths (the full context the policy's file_contexts give, as the
/// image builder labelled everything else), in batches to stay below the argument limit.
fn restorecon(paths: &[PathBuf]) -> Result<(), String> {
    for chunk in paths.chunks(256) {
        let out = std::process::Command::new("restorecon")
            .arg("-F")
            .arg("--")
            .args(chunk)
            .output()
            .map_err(|e| format!("running restorecon: {e} (the image needs policycoreutils)"))?;
        if !out.status.success() {
            return Err(format!(
                "restorecon failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn fail(e: &AgentError) -> ExitCode {
    let msg = format!("FAILED: {e}; no RKE2 service was enabled");
    eprintln!("rke2-firstboot: {msg}");
    notify(&[sd_notify::NotifyState::Status(&msg)]);
    ExitCode::FAILURE
}
