//! `rke2-update health`: the gate `rke2-update-health.service` runs before
//! `boot-complete.target` on every boot (`systemd-bless-boot` marks a counted entry good only
//! once that target is reached).
//!
//! Healthy, within the policy's `healthTimeoutSeconds`, means:
//! 1. the first-boot agent finished: its stamp `/var/lib/rke2-firstboot/done` exists (its
//!    failure record `/var/lib/rke2-firstboot/failed` fails the check at once);
//! 2. no RKE2 role unit is enabled (`systemctl is-enabled rke2-server.service` /
//!    `rke2-agent.service`): healthy now; otherwise the enabled role unit is `active`
//!    (`failed` fails at once, with the unit's result);
//! 3. server: its supervisor answers `https://127.0.0.1:9345/v1-rke2/readyz` with 200 (basic
//!    auth as `server` with the password of `/var/lib/rancher/rke2/server/token`; the loopback
//!    connection is not certificate-checked: it never leaves the node). Agent: its join is
//!    recorded: `/var/lib/rancher/rke2/agent/client-kubelet.crt` (the certificate RKE2's agent
//!    receives from the server when it joins) or `/var/lib/rancher/rke2/agent/joined` (the
//!    test stand-in's record).
//!
//! Before checking, the update record is reconciled with what booted ([`reconcile`]). On a
//! counted boot (systemd-boot's `LoaderBootCountPath` efivar exists) a failure exits 1, so the
//! unit's `FailureAction=reboot` moves on to the next try; on an uncounted boot the check takes
//! one look without waiting and its result is only recorded (never a reboot loop, and
//! multi-user.target, which orders after the unit, is not held up).

use std::path::Path;
use std::time::Duration;

use rke2_image_contract::update::{Entry, EntryState};

use super::{esp, running_slot, state, Roots};

pub const SERVER_UNIT: &str = "rke2-server.service";
pub const AGENT_UNIT: &str = "rke2-agent.service";
const SERVER_TOKEN: &str = "var/lib/rancher/rke2/server/token";
const AGENT_JOINED: [&str; 2] = [
    "var/lib/rancher/rke2/agent/client-kubelet.crt",
    "var/lib/rancher/rke2/agent/joined",
];
const READYZ: &str = "https://127.0.0.1:9345/v1-rke2/readyz";
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    Active,
    /// Failed, with the unit's `Result` (e.g. `exit-code`).
    Failed(String),
    /// Anything else (activating, inactive, ...), with its name.
    Other(String),
}

/// What the check needs from the running system (a fake in tests).
pub trait System {
    fn is_enabled(&self, unit: &str) -> bool;
    fn unit_state(&self, unit: &str) -> UnitState;
    /// Ok when the local supervisor answers readyz with 200.
    fn readyz(&self, root: &Path) -> Result<(), String>;
    /// Time since the check started.
    fn elapsed(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// Waits until the node is healthy (Ok: what made it healthy) or `deadline` passes or
/// something failed for good (Err: why).
pub fn check(root: &Path, sys: &dyn System, deadline: Duration) -> Result<String, String> {
    let stamp = root.join(crate::render::STAMP.trim_start_matches('/'));
    let failed = root.join(crate::render::FAILED.trim_start_matches('/'));
    let mut waiting;
    loop {
        if let Ok(t) = std::fs::read_to_string(&failed) {
            return Err(format!("the first-boot agent failed: {}", t.trim()));
        }
        if !stamp.exists() {
            waiting = "the first-boot agent to finish".to_string();
        } else {
            let role = [SERVER_UNIT, AGENT_UNIT]
                .into_iter()
                .find(|u| sys.is_enabled(u));
            let Some(unit) = role else {
                return Ok("no RKE2 role enabled; healthy once booted".into());
            };
            match sys.unit_state(unit) {
                UnitState::Failed(r) => return Err(format!("{unit} failed ({r})")),
                UnitState::Other(s) => waiting = format!("{unit} to become active (it is {s})"),
                UnitState::Active if unit == SERVER_UNIT => match sys.readyz(root) {
                    Ok(()) => return Ok(format!("{unit} active and {READYZ} ready")),
                    Err(e) => waiting = format!("{READYZ} ({e})"),
                },
                UnitState::Active => {
                    if let Some(j) = AGENT_JOINED.iter().find(|j| root.join(j).exists()) {
                        return Ok(format!("{unit} active and joined (/{j})"));
                    }
                    waiting = format!("{unit} to record its join (/{})", AGENT_JOINED[0]);
                }
            }
        }
        if sys.elapsed() >= deadline {
            return Err(format!(
                "not healthy after {} s: still waiting for {waiting}",
                deadline.as_secs()
            ));
        }
        sys.sleep(POLL);
    }
}

/// Brings the record up to date with what booted: an apply that never finished becomes
/// `interrupted`; a pending update of the other slot whose entry is now bad (its tries used
/// up: systemd-boot fell back to us) becomes `rolled-back` with the reason.
pub fn reconcile(st: &mut state::State, slot: char, entries: &[Entry]) {
    let health = st.health.clone();
    let Some(last) = st.last.as_mut() else {
        return;
    };
    if last.result == state::WRITING {
        last.result = state::INTERRUPTED.into();
        last.reason = format!(
            "the node restarted while slot {} was being written; run apply again",
            last.to_slot
        );
        return;
    }
    if last.result != state::PENDING || last.to_slot == slot.to_string() {
        return;
    }
    let to = last.to_slot.chars().next().unwrap_or('?');
    if esp::of_slot(entries, to).map(Entry::state) != Some(EntryState::Bad) {
        return;
    }
    last.result = state::ROLLED_BACK.into();
    last.reason = match health.get(&last.to_slot) {
        Some(h) if h.version == last.to_version && !h.healthy => format!(
            "slot {} ({}) failed its health check: {}",
            last.to_slot, last.to_version, h.reason
        ),
        _ => format!(
            "slot {} ({}) never reached its health check (it failed to boot {} times)",
            last.to_slot, last.to_version, last.tries
        ),
    };
}

/// The whole gate. Ok(true): healthy; Ok(false): unhealthy (or the check itself failed) on an
/// uncounted boot (printed, recorded when possible, exit 0: never a reboot there); Err:
/// unhealthy or failed on a counted boot (exit 1 → reboot → the next try).
pub fn run(roots: &Roots, sys: &dyn System, say: &mut dyn FnMut(&str)) -> Result<bool, String> {
    let counted = roots.counted_boot();
    match gate(roots, sys, counted, say) {
        Err(e) if !counted => {
            say(&format!("{e} (an uncounted boot: no reboot)"));
            Ok(false)
        }
        r => r,
    }
}

fn gate(
    roots: &Roots,
    sys: &dyn System,
    counted: bool,
    say: &mut dyn FnMut(&str),
) -> Result<bool, String> {
    let b = roots.boot_info()?;
    if b.source != "disk" {
        say(&format!(
            "{} boot: no A/B slots; nothing to check",
            b.source
        ));
        return Ok(true);
    }
    let slot = running_slot(&b)?;
    let ii = roots.image_info()?;
    let policy = roots.policy()?;
    // Without the ESP (efi.mount failed) the check still runs; only the record cannot be
    // reconciled with the entries (and systemd-bless-boot cannot bless either).
    let entries = esp::list(&roots.esp, &ii.name).unwrap_or_else(|e| {
        say(&format!("warning: {e}"));
        Vec::new()
    });
    let st = state::update(&roots.state, |s| reconcile(s, slot, &entries))?;
    if let Some(l) = &st.last {
        if l.result == state::ROLLED_BACK {
            say(&format!("last update rolled back: {}", l.reason));
        }
    }
    // Only a counted boot waits: an uncounted one (no update to judge) records one look, so
    // multi-user.target (which orders after this unit) is not held up for the deadline.
    let deadline = if counted {
        Duration::from_secs(policy.health_timeout_seconds)
    } else {
        Duration::ZERO
    };
    let r = check(&roots.root, sys, deadline);
    let (healthy, reason) = match &r {
        Ok(why) => (true, why.clone()),
        Err(why) => (false, why.clone()),
    };
    let version = ii.version.clone();
    state::update(&roots.state, |s| {
        s.health.insert(
            slot.to_string(),
            state::HealthReport {
                version: version.clone(),
                healthy,
                counted,
                reason: reason.clone(),
            },
        );
        if let Some(l) = s.last.as_mut() {
            if healthy && l.result == state::PENDING && l.to_slot == slot.to_string() {
                l.result = state::GOOD.into();
                l.reason = reason.clone();
            }
        }
    })?;
    let what = format!("slot {slot} ({version})");
    if healthy {
        say(&format!("{what} healthy: {reason}"));
        return Ok(true);
    }
    if counted {
        return Err(format!(
            "{what} UNHEALTHY: {reason}; rebooting into the next try (after the last, the \
             previous slot boots)"
        ));
    }
    say(&format!(
        "{what} unhealthy: {reason} (an uncounted boot: recorded only, no reboot)"
    ));
    Ok(false)
}

/// The running system: `systemctl`, and the readyz client.
pub struct Systemd {
    pub start: std::time::Instant,
}

impl System for Systemd {
    fn is_enabled(&self, unit: &str) -> bool {
        std::process::Command::new("systemctl")
            .args(["is-enabled", "--quiet", unit])
            .status()
            .is_ok_and(|s| s.success())
    }
    fn unit_state(&self, unit: &str) -> UnitState {
        // One property per call: `systemctl show` prints several in its own order.
        let prop = |p: &str| {
            std::process::Command::new("systemctl")
                .args(["show", "--value", "--property", p, unit])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        match prop("ActiveState").as_str() {
            "active" => UnitState::Active,
            "failed" => UnitState::Failed(prop("Result")),
            s => UnitState::Other(s.to_string()),
        }
    }
    fn readyz(&self, root: &Path) -> Result<(), String> {
        use crate::http::{self, Tls, Url};
        let p = root.join(SERVER_TOKEN);
        let t = std::fs::read_to_string(&p)
            .map_err(|e| format!("no token yet at /{SERVER_TOKEN}: {e}"))?;
        let token = crate::preflight::Token::parse(t.trim()).map_err(|e| e.to_string())?;
        let url = Url::parse(READYZ).map_err(|e| e.to_string())?;
        let r = http::get(
            &url,
            &Tls::Insecure,
            Some(&token.basic("server")),
            Duration::from_secs(5),
            1 << 16,
        )
        .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {}", r.status))
        }
    }
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}
