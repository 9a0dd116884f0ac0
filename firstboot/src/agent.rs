//! The agent's operations (`run`, `render`, `validate`, `status`), kept out of `main.rs` so tests
//! drive them with temporary directories.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::atomic::Root;
use crate::dialects::{self, DialectError};
use crate::identity::Identity;
use crate::network::{self, NetworkPlan};
use crate::plan::Plan;
use crate::preflight::{self, Backoff, PreflightError, Token};
use crate::render::{self, Phase, RenderError, RenderInput, PHASES};
use crate::role::{self, Assignment, RoleError};
use crate::sources::{self, Found, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Dialect(#[from] DialectError),
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A configuration the target root refuses (or a phase failing on it): names the file.
    #[error("{origin}: {err}")]
    Config {
        origin: String,
        #[source]
        err: RenderError,
    },
    #[error("join preflight: {0}")]
    Preflight(#[from] PreflightError),
    #[error("no configuration found (tried: {0})")]
    NothingFound(String),
    #[error("network: {0}")]
    Network(String),
    #[error("SELinux labels: {0}")]
    Relabel(String),
    #[error("{origin}: {err}")]
    Install { origin: String, err: String },
}

/// A parsed configuration with this machine's assignment.
#[derive(Debug)]
pub struct Loaded {
    pub origin: String,
    pub sha256: String,
    pub plan: Plan,
    pub assignment: Option<Assignment>,
}

impl Loaded {
    pub fn input(&self) -> RenderInput<'_> {
        RenderInput {
            origin: &self.origin,
            config_sha256: &self.sha256,
            plan: &self.plan,
            rke2: match (&self.plan.rke2, &self.assignment) {
                (Some(c), Some(a)) => Some((c.as_ref(), a)),
                _ => None,
            },
        }
    }
}

/// Parses a found configuration and resolves this machine's role.
pub fn load(found: &Found, id: &Identity) -> Result<Loaded, AgentError> {
    let plan = dialects::parse(&found.origin, &found.bytes, found.meta_hostname.as_deref())?;
    let assignment = match &plan.rke2 {
        Some(cfg) => Some(role::resolve(cfg, id)?),
        None => None,
    };
    Ok(Loaded {
        origin: found.origin.clone(),
        sha256: hex::encode(Sha256::digest(&found.bytes)),
        plan,
        assignment,
    })
}

/// `validate`: parse and check, returning the warnings. For a cluster configuration every
/// node is resolved (as if this machine were each of them). With a root, the checks that need
/// it run too — the same [`render::check`] `render` and `run` call before their first write.
pub fn validate(
    origin: &str,
    bytes: &[u8],
    root: Option<&Root>,
) -> Result<Vec<String>, AgentError> {
    let plan = dialects::parse(origin, bytes, None)?;
    let mut warnings = plan.warnings.clone();
    let mut assignments = Vec::new();
    match &plan.rke2 {
        Some(cfg) if !cfg.nodes.is_empty() => {
            for n in &cfg.nodes {
                let mut id = Identity::default();
                let m = &n.matches;
                if let Some(macs) = &m.mac {
                    id.macs.extend(
                        macs.to_vec()
                            .iter()
                            .filter_map(|x| crate::identity::normalize_mac(x)),
                    );
                }
                id.uuid = m.uuid.as_ref().map(|u| u.to_ascii_lowercase());
                id.serial = m.serial.clone();
                id.hostname = m.hostname.clone();
                assignments.push(role::resolve(cfg, &id)?);
            }
        }
        Some(cfg) => {
            assignments.push(role::resolve(cfg, &Identity::default())?);
        }
        None => warnings.push(
            "no RKE2 section: the configuration sets up the OS only and no RKE2 service is enabled"
                .into(),
        ),
    }
    for t in plan
        .rke2
        .iter()
        .flat_map(|c| [c.cluster.token.as_ref(), c.cluster.agent_token.as_ref()])
        .flatten()
    {
        Token::parse(&t.0)?;
    }
    if let Some(root) = root {
        let sha = hex::encode(Sha256::digest(bytes));
        let targets: Vec<Option<&Assignment>> = if assignments.is_empty() {
            vec![None]
        } else {
            assignments.iter().map(Some).collect()
        };
        for a in targets {
            let input = RenderInput {
                origin,
                config_sha256: &sha,
                plan: &plan,
                rke2: plan.rke2.as_deref().zip(a),
            };
            render::check(root, &input).map_err(|err| AgentError::Config {
                origin: origin.to_string(),
                err,
            })?;
        }
    }
    Ok(warnings)
}

/// `render`: everything except network waits and service starts.
pub fn render_to(
    root: &Root,
    loaded: &Loaded,
    hook: &mut dyn FnMut(Phase) -> Result<(), RenderError>,
) -> Result<(), AgentError> {
    render::render(root, &loaded.input(), hook).map_err(|err| AgentError::Config {
        origin: loaded.origin.clone(),
        err,
    })
}

/// Makes the network file the System phase wrote live on this machine, reporting progress
/// through the callback; returns the interface name it configured, or why it could not.
pub type NetworkApply = Box<dyn Fn(&NetworkPlan, &mut dyn FnMut(&str)) -> Result<String, String>>;

/// Sets the SELinux labels the loaded policy gives these existing host paths (the binary runs
/// `restorecon`); or why it could not.
pub type Relabel = Box<dyn Fn(&[PathBuf]) -> Result<(), String>>;

/// What `run` needs from the machine.
pub struct RunEnv {
    pub root: PathBuf,
    pub sources: Vec<Box<dyn Source>>,
    pub identity: Identity,
    /// Overrides the configuration's preflight deadline (tests).
    pub preflight_backoff: Option<Backoff>,
    /// Called after the System phase when the node has a `network` section, before the join
    /// preflight needs the address. None: the file is written but not applied (tests).
    pub network_apply: Option<NetworkApply>,
    /// Test knob: stop forever at the top of this phase (after the previous phases' writes
    /// were flushed), so a test can cut the power there.
    pub pause_before: Option<Phase>,
    /// Called after every phase with what it wrote (None: no SELinux on this root, tests).
    pub relabel: Option<Relabel>,
    /// The kernel command line when this is a live boot (`rke2.root=iso`): then an install
    /// request (configuration `install:` or `rke2.install`) makes [`run`] return
    /// [`RunOutcome::Install`] before anything is written. `None` on a disk boot: an installed
    /// node reading the same configuration never installs again.
    pub live_cmdline: Option<String>,
}

impl std::fmt::Debug for RunEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEnv")
            .field("root", &self.root)
            .field("pause_before", &self.pause_before)
            .finish()
    }
}

/// What `run` did.
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    AlreadyDone,
    /// Install the image onto a disk instead of configuring this (live) system.
    Install(crate::install::InstallRequest),
    Configured {
        /// The RKE2 unit enabled, if any.
        unit: Option<&'static str>,
        /// Units written and enabled during this run that the current boot transaction does
        /// not know about yet (cloud-config bootcmd/runcmd), to start now.
        also_start: Vec<&'static str>,
    },
}

/// `run`: find, parse, render, preflight, enable, stamp. On failure no RKE2 service is left
/// enabled and the reason is recorded.
pub fn run(env: &RunEnv, status: &mut dyn FnMut(&str)) -> Result<RunOutcome, AgentError> {
    let root = Root::new(&env.root);
    if root.exists(render::STAMP) {
        return Ok(RunOutcome::AlreadyDone);
    }
    let r = run_inner(env, &root, status);
    if let Err(e) = &r {
        // Best effort: the original error is what matters.
        let _ = render::record_failure(&root, &e.to_string());
    }
    r
}

fn run_inner(
    env: &RunEnv,
    root: &Root,
    status: &mut dyn FnMut(&str),
) -> Result<RunOutcome, AgentError> {
    status(&format!("identity: {}", env.identity));
    let found = sources::first_found(&env.sources, status)?;
    // A live boot with `rke2.install=<target>` and no configuration: install all the same.
    if let (None, Some(cl)) = (&found, &env.live_cmdline) {
        let r =
            crate::install::request("install", None, cl).map_err(|err| AgentError::Install {
                origin: "kernel command line".into(),
                err,
            })?;
        if let Some(r) = r {
            return Ok(RunOutcome::Install(r));
        }
    }
    let found = found.ok_or_else(|| {
        AgentError::NothingFound(
            env.sources
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    status(&format!("configuration from {}", found.origin));
    let loaded = load(&found, &env.identity)?;
    for w in &loaded.plan.warnings {
        status(&format!("warning: {w}"));
    }
    if let Some(a) = &loaded.assignment {
        status(&format!(
            "role: {}{} as {}",
            a.role.name(),
            if a.initializer { " (initializer)" } else { "" },
            a.hostname.as_deref().unwrap_or("(hostname unchanged)")
        ));
    }
    if let Some(cl) = &env.live_cmdline {
        let hostname = loaded
            .assignment
            .as_ref()
            .and_then(|a| a.hostname.as_deref());
        let (key, section) = match &loaded.plan.rke2 {
            Some(cfg) => cfg.install_for(hostname),
            None => ("install".into(), None),
        };
        let r = crate::install::request(&key, section, cl).map_err(|err| AgentError::Install {
            origin: loaded.origin.clone(),
            err,
        })?;
        if let Some(r) = r {
            return Ok(RunOutcome::Install(r));
        }
    }
    let input = loaded.input();
    render::check(root, &input).map_err(|err| AgentError::Config {
        origin: loaded.origin.clone(),
        err,
    })?;
    // All or nothing: a failure in any phase (or in the preflight) puts the root back.
    root.begin();
    let r = phases(env, root, &input, status);
    match &r {
        Ok(()) => root.commit(),
        Err(_) => {
            // Drop what the failed phase touched: it is undone now.
            root.take_touched();
            if let Err(e) = root.rollback() {
                status(&format!(
                    "warning: restoring the root after the failure: {e}"
                ));
            }
            // Restored files are new inodes (e.g. /etc/shadow): give them their labels back.
            if let Err(e) = relabel(env, root) {
                status(&format!("warning: relabelling what was restored: {e}"));
            }
        }
    }
    r?;
    let mut also_start = Vec::new();
    if !loaded.plan.bootcmd.is_empty() {
        also_start.push(render::BOOTCMD_UNIT);
    }
    if !loaded.plan.runcmd.is_empty() {
        also_start.push(render::RUNCMD_UNIT);
    }
    Ok(RunOutcome::Configured {
        unit: input.rke2.map(|(_, a)| a.role.unit()),
        also_start,
    })
}

fn phases(
    env: &RunEnv,
    root: &Root,
    input: &RenderInput<'_>,
    status: &mut dyn FnMut(&str),
) -> Result<(), AgentError> {
    for p in PHASES {
        if env.pause_before == Some(p) {
            pause(p, status);
        }
        if p == Phase::Enable {
            if let Some((cfg, a)) = input.rke2 {
                if let (Some(url), true) = (&a.server_url, cfg.cluster.preflight.enabled) {
                    let tok = crate::rke2::join_token(cfg, a).ok_or(PreflightError::BadToken(
                        "joining needs cluster.token (or cluster.agent-token for agents)",
                    ))?;
                    let token = Token::parse(tok)?;
                    let b = env.preflight_backoff.unwrap_or_else(|| {
                        Backoff::with_deadline(Duration::from_secs(
                            cfg.cluster.preflight.timeout_seconds,
                        ))
                    });
                    status(&format!("join preflight against {url}"));
                    preflight::check(url, &token, a.role, &b, &mut |m| status(m))?;
                    status("join preflight passed");
                }
            }
        }
        status(p.describe());
        render::phase(root, input, p)?;
        root.flush().map_err(RenderError::from)?;
        relabel(env, root)?;
        if p == Phase::System {
            if let Some(net) = input.rke2.and_then(|(_, a)| a.network.as_ref()) {
                apply_network(env, net, status)?;
            }
        }
    }
    Ok(())
}

fn apply_network(
    env: &RunEnv,
    net: &NetworkPlan,
    status: &mut dyn FnMut(&str),
) -> Result<(), AgentError> {
    match &env.network_apply {
        Some(apply) => {
            let ifname = apply(net, status).map_err(AgentError::Network)?;
            status(&format!("network: {}", network::describe(net, &ifname)));
        }
        None => status(&format!(
            "network: {} written, not applied (no apply hook)",
            network::NETWORK_FILE
        )),
    }
    Ok(())
}

/// The test knob's pause: report, then wait for the test to cut the power.
fn pause(p: Phase, status: &mut dyn FnMut(&str)) -> ! {
    status(&format!("test knob: pausing before phase {}", p.name()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Labels what the last phase wrote, before anything (the next phase, RKE2) uses it.
fn relabel(env: &RunEnv, root: &Root) -> Result<(), AgentError> {
    // Taken in any case: the set only ever holds one phase's writes.
    let touched = root.take_touched();
    let Some(f) = &env.relabel else {
        return Ok(());
    };
    let touched: Vec<PathBuf> = touched
        .into_iter()
        // Written then removed within the phase: nothing to label.
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    if touched.is_empty() {
        return Ok(());
    }
    f(&touched).map_err(AgentError::Relabel)?;
    // Labels are inode metadata the next phase must not overtake: make them durable (a power
    // cut seconds later lost a relabelled directory's label in the QEMU test).
    for p in touched.iter().filter(|p| !p.is_symlink()) {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| AgentError::Relabel(format!("fsync {}: {e}", p.display())))?;
    }
    Ok(())
}

/// `status`: a one-paragraph summary from the stamp or the failure record (no secrets: neither
/// file contains any).
pub fn status(root: &Root) -> Result<(bool, String), AgentError> {
    if let Some(b) = root
        .read(render::STAMP, 1 << 20)
        .map_err(RenderError::from)?
    {
        return Ok((
            true,
            format!("first boot completed:\n{}", String::from_utf8_lossy(&b)),
        ));
    }
    if let Some(b) = root
        .read(render::FAILED, 1 << 20)
        .map_err(RenderError::from)?
    {
        return Ok((
            false,
            format!("first boot FAILED: {}", String::from_utf8_lossy(&b).trim()),
        ));
    }
    Ok((false, "first boot has not run yet".into()))
}
