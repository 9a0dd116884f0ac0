//! Executes a [`Plan`] into a root directory, phase by phase.
//!
//! Every phase is idempotent, the RKE2 service is enabled only after everything else is in
//! place, and the completion stamp is written last, so a run killed at any point re-runs to the
//! same tree.

use std::fs;
use std::os::unix::fs::MetadataExt;

use rke2_image_contract::paths;
use serde_json::json;

use crate::atomic::{Attrs, FsError, Root};
use crate::dialects::native::{NativeConfig, Role};
use crate::network::{self, NetworkPlan};
use crate::plan::{Command, IdRef, Owner, Plan};
use crate::rke2::{self, Rke2Error};
use crate::role::Assignment;
use crate::users::{self, UserError};

/// Directory of the agent's own state on the node (persistent `/var`).
pub const STATE_DIR: &str = "/var/lib/rke2-firstboot";
/// Written last: its presence means first boot completed.
pub const STAMP: &str = "/var/lib/rke2-firstboot/done";
/// Written when a run fails: the reason (no secrets).
pub const FAILED: &str = "/var/lib/rke2-firstboot/failed";
const UNIT_DIR: &str = "/etc/systemd/system";
pub const BOOTCMD_UNIT: &str = "rke2-firstboot-bootcmd.service";
pub const RUNCMD_UNIT: &str = "rke2-firstboot-runcmd.service";
/// Where the RKE2 units are looked for in the image (install.sh prefixes), first found wins.
const RKE2_UNIT_DIRS: &[&str] = &[
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
    "opt/rke2/lib/systemd/system",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Users,
    Files,
    System,
    Rke2,
    Airgap,
    Enable,
    Stamp,
}

pub const PHASES: [Phase; 7] = [
    Phase::Users,
    Phase::Files,
    Phase::System,
    Phase::Rke2,
    Phase::Airgap,
    Phase::Enable,
    Phase::Stamp,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Users => "users",
            Phase::Files => "files",
            Phase::System => "system",
            Phase::Rke2 => "rke2",
            Phase::Airgap => "airgap",
            Phase::Enable => "enable",
            Phase::Stamp => "stamp",
        }
    }
    pub fn from_name(s: &str) -> Option<Phase> {
        PHASES.into_iter().find(|p| p.name() == s)
    }
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Users => "creating users and ssh keys",
            Phase::Files => "writing files, directories and links",
            Phase::System => "hostname, network, time zone, NTP, systemd units",
            Phase::Rke2 => "writing the RKE2 configuration",
            Phase::Airgap => "linking preloaded air-gap images",
            Phase::Enable => "enabling the RKE2 service",
            Phase::Stamp => "writing the completion stamp",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Users(#[from] UserError),
    #[error(transparent)]
    Rke2(#[from] Rke2Error),
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted before phase {}", .0.name())]
    Interrupted(Phase),
}

/// Everything a render needs besides the root.
#[derive(Debug)]
pub struct RenderInput<'a> {
    /// Where the configuration came from (for the stamp and status).
    pub origin: &'a str,
    /// sha256 of the configuration bytes.
    pub config_sha256: &'a str,
    pub plan: &'a Plan,
    /// The RKE2 part with this machine's resolved assignment.
    pub rke2: Option<(&'a NativeConfig, &'a Assignment)>,
}

/// Runs all phases; `hook` is called before each (tests use it to interrupt). All or nothing:
/// everything checkable is checked first, and on any later error every change is rolled back.
pub fn render(
    root: &Root,
    input: &RenderInput<'_>,
    hook: &mut dyn FnMut(Phase) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    check(root, input)?;
    root.begin();
    let r = (|| {
        for p in PHASES {
            hook(p)?;
            phase(root, input, p)?;
            root.flush()?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => {
            root.commit();
            Ok(())
        }
        Err(e) => {
            // The phase error is what the user needs; a failed restore is reported with it.
            match root.rollback() {
                Ok(()) => Err(e),
                Err(re) => Err(RenderError::Invalid(format!(
                    "{e}; restoring the root afterwards also failed: {re}"
                ))),
            }
        }
    }
}

/// What `validate` without `--root` cannot check (they need the target root).
pub const ROOT_CHECKS: &str = "owners and groups exist, uids/gids are free, existing files, \
    directories and links that `overwrite` protects, symlinks inside the root, the time zone, \
    units to enable exist with an [Install] section";

/// Checks everything that can be checked before the first write: the static checks every
/// dialect passed, then everything that depends on the target root. `validate --root` runs
/// exactly this.
pub fn check(root: &Root, input: &RenderInput<'_>) -> Result<(), RenderError> {
    let plan = input.plan;
    crate::plan::check_static(plan).map_err(RenderError::Invalid)?;
    let inv = |m: String| RenderError::Invalid(m);
    let mut paths: Vec<(String, String)> = Vec::new();
    for f in &plan.files {
        paths.push((f.key.clone(), f.path.clone()));
    }
    for d in &plan.directories {
        paths.push((d.key.clone(), d.path.clone()));
    }
    for l in &plan.links {
        paths.push((l.key.clone(), l.path.clone()));
    }
    for u in &plan.units {
        let base = format!("{UNIT_DIR}/{}", u.name);
        for (dn, _) in &u.dropins {
            paths.push((u.key.clone(), format!("{base}.d/{dn}")));
        }
        paths.push((u.key.clone(), base));
    }
    for u in &plan.users {
        if let Some(h) = &u.home {
            paths.push((u.key.clone(), h.clone()));
        }
    }
    if input.rke2.and_then(|(_, a)| a.network.as_ref()).is_some() {
        paths.push(("network".into(), network::NETWORK_FILE.to_string()));
    }
    for (key, p) in &paths {
        root.host_path(p).map_err(|e| inv(format!("{key}: {e}")))?;
    }

    // Accounts: what the image has plus what the configuration creates.
    let (users, groups) = users::accounts(root)?;
    let mut user_names: Vec<String> = users.iter().map(|u| u.0.clone()).collect();
    let mut group_names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    for g in &plan.groups {
        match groups.iter().find(|x| x.0 == g.name) {
            Some((_, gid)) if g.gid.is_some_and(|w| w != *gid) => {
                return Err(inv(format!(
                    "{}.gid: group {} exists in the image with gid {gid}; give that gid or none",
                    g.key, g.name
                )))
            }
            Some(_) => {}
            None => {
                if let Some(id) = g.gid {
                    if let Some(o) = groups.iter().find(|x| x.1 == id) {
                        return Err(inv(format!(
                            "{}.gid: {id} is already the gid of group {} in the image; give \
                             another gid or none",
                            g.key, o.0
                        )));
                    }
                }
                group_names.push(g.name.clone());
            }
        }
    }
    let mut planned: Vec<(&str, &str, Option<u32>)> = Vec::new();
    for u in &plan.users {
        if u.existing_only {
            continue;
        }
        // A user listed twice: the later entry updates the account the earlier one created.
        if let Some((_, first, uid)) = planned.iter().find(|p| p.0 == u.name) {
            if u.uid.is_some() && u.uid != *uid {
                return Err(inv(format!(
                    "{}.uid: user {} is created by {first} with another uid; give it once",
                    u.key, u.name
                )));
            }
            continue;
        }
        planned.push((&u.name, &u.key, u.uid));
        match users.iter().find(|x| x.0 == u.name) {
            Some((_, uid)) if u.uid.is_some_and(|w| w != *uid) => {
                return Err(inv(format!(
                    "{}.uid: user {} exists in the image with uid {uid}; give that uid or none",
                    u.key, u.name
                )))
            }
            Some(_) => {}
            None => {
                if let Some(id) = u.uid {
                    let other = users
                        .iter()
                        .find(|x| x.1 == id)
                        .map(|x| x.0.clone())
                        .or_else(|| {
                            plan.users
                                .iter()
                                .find(|x| x.name != u.name && x.uid == Some(id))
                                .map(|x| x.name.clone())
                        });
                    if let Some(o) = other {
                        return Err(inv(format!(
                            "{}.uid: {id} is already the uid of user {o}; give another uid or \
                             none",
                            u.key
                        )));
                    }
                }
                let home = u.home.clone().unwrap_or_else(|| {
                    if u.name == "root" {
                        "/root".into()
                    } else {
                        format!("/home/{}", u.name)
                    }
                });
                if !u.ssh_authorized_keys.is_empty() && u.no_create_home && !root.exists(&home) {
                    return Err(inv(format!(
                        "{}.ssh_authorized_keys: user {} gets no home directory (system or no \
                         home asked for) and {home} does not exist, so the keys have nowhere to \
                         go; drop the keys or let the home be created",
                        u.key, u.name
                    )));
                }
                user_names.push(u.name.clone());
                if u.primary_group.is_none() {
                    group_names.push(u.name.clone());
                }
            }
        }
    }
    for u in &plan.users {
        if u.existing_only && !user_names.contains(&u.name) {
            return Err(inv(format!(
                "{}: user {} is named as a group member but does not exist in the image or the \
                 configuration; add it to users",
                u.key, u.name
            )));
        }
        for g in u.primary_group.iter().chain(u.groups.iter()) {
            if !group_names.contains(g) {
                return Err(inv(format!(
                    "{}: group {g:?} does not exist in the image; create it (Ignition \
                     passwd.groups, cloud-config groups) or use an existing group",
                    u.key
                )));
            }
        }
    }
    let owner_ok = |key: &str, o: &Owner| -> Result<(), RenderError> {
        if let Some(IdRef::Name(n)) = &o.user {
            if !user_names.contains(n) {
                return Err(inv(format!(
                    "{key}.user: user {n:?} does not exist in the image or the configuration; \
                     create it or use a numeric id"
                )));
            }
        }
        if let Some(IdRef::Name(n)) = &o.group {
            if !group_names.contains(n) {
                return Err(inv(format!(
                    "{key}.group: group {n:?} does not exist in the image or the configuration; \
                     create it or use a numeric id"
                )));
            }
        }
        Ok(())
    };

    // What is at each path now, against what the entry may replace.
    for d in &plan.directories {
        owner_ok(&d.key, &d.owner)?;
        match existing(root, &d.path)? {
            Existing::None | Existing::Dir => {}
            _ if d.overwrite => {}
            _ => {
                return Err(inv(format!(
                    "{}.path: {} exists and is not a directory; set overwrite: true to replace it",
                    d.key, d.path
                )))
            }
        }
    }
    for f in &plan.files {
        owner_ok(&f.key, &f.owner)?;
        match existing(root, &f.path)? {
            Existing::None => {}
            Existing::Dir => {
                return Err(inv(format!(
                    "{}.path: {} is an existing directory; a file cannot replace it",
                    f.key, f.path
                )))
            }
            Existing::Other | Existing::Link(_) if !f.overwrite => {
                return Err(inv(format!(
                    "{}.path: {} exists and is not a regular file; set overwrite: true to \
                     replace it",
                    f.key, f.path
                )))
            }
            Existing::Other | Existing::Link(_) if f.contents.is_none() => {
                return Err(inv(format!(
                    "{}.path: {} is not a regular file, so nothing can be appended to it",
                    f.key, f.path
                )))
            }
            Existing::File if !f.overwrite => {
                if let Some(c) = &f.contents {
                    // A re-run after a crash finds the file this configuration wrote: fine.
                    let mut want = c.clone();
                    want.extend_from_slice(&f.append);
                    let same = fs::metadata(root.host_path(&f.path)?)
                        .is_ok_and(|m| m.len() == want.len() as u64)
                        && root.read(&f.path, want.len() as u64)?.as_deref() == Some(&want[..]);
                    if !same {
                        return Err(inv(format!(
                            "{}.path: {} already exists and overwrite is false; set overwrite: \
                             true to replace it, or leave out contents to keep it",
                            f.key, f.path
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    for l in &plan.links {
        match existing(root, &l.path)? {
            Existing::None => {}
            Existing::Link(t) if t == l.target => {}
            Existing::Dir => {
                return Err(inv(format!(
                    "{}.path: {} is an existing directory; a link cannot replace it",
                    l.key, l.path
                )))
            }
            _ if l.overwrite => {}
            _ => {
                return Err(inv(format!(
                    "{}.path: {} exists and is not this link; set overwrite: true to replace it",
                    l.key, l.path
                )))
            }
        }
    }
    if let Some(tz) = &plan.timezone {
        if root.exists("usr/share/zoneinfo") && !root.exists(&format!("usr/share/zoneinfo/{tz}")) {
            return Err(inv(format!(
                "timezone: {tz:?} is not a zone in the image's /usr/share/zoneinfo; use one \
                 that is, e.g. Etc/UTC"
            )));
        }
    }
    for u in &plan.units {
        if u.enabled != Some(true) || u.mask || u.contents.is_some() {
            continue;
        }
        match find_unit(root, &u.name)? {
            None => {
                return Err(inv(format!(
                    "{}.enabled: unit {} is neither in the image nor given with contents; add \
                     its contents",
                    u.key, u.name
                )))
            }
            Some((_, text)) if !crate::plan::has_install_section(&text) => {
                return Err(inv(format!(
                    "{}.enabled: unit {} in the image has no [Install] WantedBy= or \
                     RequiredBy=, so it cannot be enabled",
                    u.key, u.name
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What is at a node path (without following a final symlink).
enum Existing {
    None,
    Dir,
    File,
    Link(String),
    Other,
}

fn existing(root: &Root, path: &str) -> Result<Existing, RenderError> {
    let host = root.host_path(path)?;
    Ok(match fs::symlink_metadata(&host) {
        Err(_) => Existing::None,
        Ok(md) if md.is_dir() => Existing::Dir,
        Ok(md) if md.file_type().is_symlink() => Existing::Link(
            fs::read_link(&host)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        Ok(md) if md.is_file() => Existing::File,
        Ok(_) => Existing::Other,
    })
}

/// Runs one phase.
pub fn phase(root: &Root, input: &RenderInput<'_>, p: Phase) -> Result<(), RenderError> {
    let plan = input.plan;
    match p {
        Phase::Users => {
            users::apply(root, &plan.groups, &plan.users)?;
            if let Some((cfg, a)) = input.rke2 {
                // RKE2's CIS profile refuses to start a server without an etcd user and group.
                if a.role == Role::Server
                    && cfg.cluster.profile.as_deref() == Some("cis")
                    && users::uid_of(root, "etcd")?.is_none()
                {
                    users::apply(
                        root,
                        &[],
                        &[crate::plan::UserSpec {
                            name: "etcd".into(),
                            gecos: Some("etcd user".into()),
                            home: Some("/var/lib/rancher/rke2/server/db/etcd".into()),
                            shell: Some("/sbin/nologin".into()),
                            system: true,
                            no_create_home: true,
                            ..Default::default()
                        }],
                    )?;
                }
            }
        }
        Phase::Files => files(root, input)?,
        Phase::System => system(root, input)?,
        Phase::Rke2 => {
            if let Some((cfg, a)) = input.rke2 {
                rke2_files(root, cfg, a)?;
            }
        }
        Phase::Airgap => {
            if let Some((cfg, a)) = input.rke2 {
                if cfg.cluster.airgap_images != Some(false) {
                    airgap(root)?;
                }
                if a.role == Role::Server {
                    baked_manifests(root)?;
                }
            }
        }
        Phase::Enable => {
            // Without an RKE2 section the image's own enablement is left alone.
            if let Some((_, a)) = input.rke2 {
                disable_rke2(root)?;
                enable_rke2(root, a.role)?;
            }
        }
        Phase::Stamp => stamp(root, input)?,
    }
    Ok(())
}

/// Marks a completed Files phase of a configuration with appends (its sha256), so a re-run
/// after a later crash does not append again.
const FILES_DONE: &str = "/var/lib/rke2-firstboot/files-done";

fn files(root: &Root, input: &RenderInput<'_>) -> Result<(), RenderError> {
    let plan = input.plan;
    let appends = plan.files.iter().any(|f| !f.append.is_empty());
    if appends && root.read(FILES_DONE, 1024)?.as_deref() == Some(input.config_sha256.as_bytes()) {
        return Ok(());
    }
    let ids = |key: &str, o: &Owner| -> Result<(Option<u32>, Option<u32>), RenderError> {
        let uid = match &o.user {
            None => None,
            Some(IdRef::Id(i)) => Some(*i),
            Some(IdRef::Name(n)) => Some(users::uid_of(root, n)?.ok_or_else(|| {
                RenderError::Invalid(format!("{key}.user: user {n:?} does not exist"))
            })?),
        };
        let gid = match &o.group {
            None => None,
            Some(IdRef::Id(i)) => Some(*i),
            Some(IdRef::Name(n)) => Some(users::gid_of(root, n)?.ok_or_else(|| {
                RenderError::Invalid(format!("{key}.group: group {n:?} does not exist"))
            })?),
        };
        Ok((uid, gid))
    };
    for d in &plan.directories {
        let (uid, gid) = ids(&d.key, &d.owner)?;
        let host = root.host_path(&d.path)?;
        let old = fs::symlink_metadata(&host).ok();
        let attrs = match &old {
            Some(md) if md.is_dir() => Attrs {
                mode: d.mode.unwrap_or(md.mode() & 0o7777),
                uid: uid.unwrap_or(md.uid()),
                gid: gid.unwrap_or(md.gid()),
            },
            _ => Attrs {
                mode: d.mode.unwrap_or(0o755),
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
            },
        };
        if old.as_ref().is_some_and(|md| !md.is_dir()) {
            // `check` allowed this only with overwrite: true.
            root.remove(&d.path)?;
        }
        root.mkdir(&d.path, attrs)?;
    }
    for f in &plan.files {
        let (uid, gid) = ids(&f.key, &f.owner)?;
        let host = root.host_path(&f.path)?;
        let old = match fs::symlink_metadata(&host) {
            Ok(md) if md.is_file() => Some((
                md,
                root.read(&f.path, crate::dialects::MAX_DECODED_BYTES as u64)?
                    .unwrap_or_default(),
            )),
            _ => None,
        };
        let (mut data, attrs) = match (&f.contents, old) {
            (Some(c), _) => (
                c.clone(),
                Attrs {
                    mode: f.mode.unwrap_or(0o644),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                },
            ),
            // Kept (and appended to): its mode and owner stay unless the entry sets them.
            (None, Some((md, bytes))) => (
                bytes,
                Attrs {
                    mode: f.mode.unwrap_or(md.mode() & 0o7777),
                    uid: uid.unwrap_or(md.uid()),
                    gid: gid.unwrap_or(md.gid()),
                },
            ),
            (None, None) => (
                Vec::new(),
                Attrs {
                    mode: f.mode.unwrap_or(0o644),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                },
            ),
        };
        data.extend_from_slice(&f.append);
        root.write(&f.path, &data, attrs)?;
    }
    for l in &plan.links {
        root.symlink(&l.path, &l.target)?;
    }
    if appends {
        // The marker must not become durable before the appends it vouches for.
        root.flush()?;
        root.mkdir("/var/lib", Attrs::root(0o755))?;
        root.mkdir(STATE_DIR, Attrs::root(0o700))?;
        root.write(
            FILES_DONE,
            input.config_sha256.as_bytes(),
            Attrs::root(0o600),
        )?;
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn script(cmds: &[Command]) -> String {
    // No `set -e`: as in cloud-init, a failing command does not stop the ones after it.
    let mut s = String::from("#!/bin/sh\n# Written by rke2-firstboot from cloud-config.\n");
    for c in cmds {
        match c {
            Command::Shell(line) => s.push_str(line),
            Command::Argv(a) => s.push_str(
                &a.iter()
                    .map(|x| shell_quote(x))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
        s.push('\n');
    }
    s
}

fn find_unit(root: &Root, name: &str) -> Result<Option<(String, String)>, RenderError> {
    for dir in [
        "etc/systemd/system",
        "usr/local/lib/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ] {
        let p = format!("{dir}/{name}");
        // Debian's /lib is a symlink to usr/lib: a path through it is simply not looked at.
        let found = match root.read(&p, 1 << 20) {
            Err(FsError::Symlink { .. }) => None,
            r => r?,
        };
        if let Some(b) = found {
            return Ok(Some((
                format!("/{p}"),
                String::from_utf8_lossy(&b).into_owned(),
            )));
        }
    }
    Ok(None)
}

fn enable_unit(root: &Root, name: &str) -> Result<(), RenderError> {
    let (path, text) = find_unit(root, name)?.ok_or_else(|| {
        RenderError::Invalid(format!(
            "unit {name}: cannot enable, no unit file in the image or the config"
        ))
    })?;
    let targets = crate::plan::install_targets(&text);
    if targets.is_empty() {
        return Err(RenderError::Invalid(format!(
            "unit {name}: cannot enable, it has no [Install] WantedBy= or RequiredBy="
        )));
    }
    for (t, suffix) in targets {
        root.symlink(&format!("{UNIT_DIR}/{t}.{suffix}/{name}"), &path)?;
    }
    Ok(())
}

fn disable_unit(root: &Root, name: &str) -> Result<(), RenderError> {
    let dir = root.host_path(UNIT_DIR)?;
    let mut links = Vec::new();
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if (n.ends_with(".wants") || n.ends_with(".requires"))
                && e.path().join(name).symlink_metadata().is_ok()
            {
                links.push(format!("{UNIT_DIR}/{n}/{name}"));
            }
        }
    }
    links.sort();
    for l in links {
        root.remove(&l)?;
    }
    Ok(())
}

fn system(root: &Root, input: &RenderInput<'_>) -> Result<(), RenderError> {
    let plan = input.plan;
    let hostname = input
        .rke2
        .and_then(|(_, a)| a.hostname.clone())
        .or_else(|| plan.hostname.clone());
    if let Some(h) = &hostname {
        root.write(
            "/etc/hostname",
            format!("{h}\n").as_bytes(),
            Attrs::root(0o644),
        )?;
    }
    if let Some(f) = &plan.fqdn {
        let short = hostname.as_deref().unwrap_or(f);
        let old = root.read("/etc/hosts", 1 << 20)?.unwrap_or_default();
        let mut text: String = String::from_utf8_lossy(&old)
            .lines()
            .filter(|l| !l.trim_start().starts_with("127.0.1.1"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("127.0.1.1\t{f} {short}\n"));
        root.write("/etc/hosts", text.as_bytes(), Attrs::root(0o644))?;
    }
    if let Some(net) = input.rke2.and_then(|(_, a)| a.network.as_ref()) {
        network_files(root, net)?;
    }
    if let Some(tz) = &plan.timezone {
        if root.exists("usr/share/zoneinfo") && !root.exists(&format!("usr/share/zoneinfo/{tz}")) {
            return Err(RenderError::Invalid(format!(
                "timezone {tz:?}: no such zone in the image's /usr/share/zoneinfo"
            )));
        }
        root.symlink("/etc/localtime", &format!("/usr/share/zoneinfo/{tz}"))?;
        root.write(
            "/etc/timezone",
            format!("{tz}\n").as_bytes(),
            Attrs::root(0o644),
        )?;
    }
    if let Some(ntp) = &plan.ntp {
        if ntp.enabled {
            let mut servers = ntp.servers.clone();
            servers.extend(ntp.pools.iter().cloned());
            if servers.iter().any(|s| s.contains(char::is_whitespace)) {
                return Err(RenderError::Invalid(
                    "ntp: a server name contains whitespace".into(),
                ));
            }
            if !servers.is_empty() {
                root.write(
                    "/etc/systemd/timesyncd.conf.d/50-rke2-firstboot.conf",
                    format!(
                        "# Written by rke2-firstboot.\n[Time]\nNTP={}\n",
                        servers.join(" ")
                    )
                    .as_bytes(),
                    Attrs::root(0o644),
                )?;
            }
        } else {
            root.symlink(
                &format!("{UNIT_DIR}/systemd-timesyncd.service"),
                "/dev/null",
            )?;
        }
    }
    let mut units = plan.units.clone();
    for (cmds, unit, file, once) in [
        (&plan.bootcmd, BOOTCMD_UNIT, "bootcmd.sh", false),
        (&plan.runcmd, RUNCMD_UNIT, "runcmd.sh", true),
    ] {
        if cmds.is_empty() {
            continue;
        }
        root.mkdir(STATE_DIR, Attrs::root(0o700))?;
        let path = format!("{STATE_DIR}/{file}");
        root.write(&path, script(cmds).as_bytes(), Attrs::root(0o700))?;
        let (order, cond) = if once {
            (
                "After=rke2-firstboot.service network-online.target\nWants=network-online.target\n"
                    .to_string(),
                format!("ConditionPathExists=!{STATE_DIR}/runcmd.done\n"),
            )
        } else {
            ("Before=rke2-firstboot.service\n".to_string(), String::new())
        };
        // runcmd runs once per instance even when it fails: marked before it runs.
        let post = if once {
            format!("ExecStartPre=/bin/touch {STATE_DIR}/runcmd.done\n")
        } else {
            String::new()
        };
        units.push(crate::plan::UnitSpec {
            key: file.trim_end_matches(".sh").to_string(),
            name: unit.to_string(),
            contents: Some(format!(
                "# Written by rke2-firstboot from cloud-config.\n[Unit]\nDescription=cloud-config {}\n{order}{cond}\n[Service]\nType=oneshot\n{post}ExecStart=/bin/sh {path}\nRemainAfterExit=yes\n\n[Install]\nWantedBy=multi-user.target\n",
                file.trim_end_matches(".sh")
            )),
            enabled: Some(true),
            mask: false,
            dropins: Vec::new(),
        });
    }
    for u in &units {
        let path = format!("{UNIT_DIR}/{}", u.name);
        if u.mask {
            root.symlink(&path, "/dev/null")?;
            disable_unit(root, &u.name)?;
            continue;
        }
        if let Some(c) = &u.contents {
            root.write(&path, c.as_bytes(), Attrs::root(0o644))?;
        }
        for (dn, dc) in &u.dropins {
            root.write(&format!("{path}.d/{dn}"), dc.as_bytes(), Attrs::root(0o644))?;
        }
        match u.enabled {
            Some(true) => enable_unit(root, &u.name)?,
            Some(false) => disable_unit(root, &u.name)?,
            None => {}
        }
    }
    Ok(())
}

/// The networkd file for this node's static address, and the resolver configuration.
fn network_files(root: &Root, net: &NetworkPlan) -> Result<(), RenderError> {
    root.write(
        network::NETWORK_FILE,
        network::networkd_file(net).as_bytes(),
        Attrs::root(0o644),
    )?;
    if let Some(text) = network::resolv_conf(net) {
        // A symlink there means a resolver manager (systemd-resolved) owns the file; networkd
        // hands it the DNS= servers itself.
        let link = root
            .host_path(network::RESOLV_CONF)?
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if !link {
            root.write(network::RESOLV_CONF, text.as_bytes(), Attrs::root(0o644))?;
        }
    }
    Ok(())
}

fn rke2_files(root: &Root, cfg: &NativeConfig, a: &Assignment) -> Result<(), RenderError> {
    root.mkdir("/etc/rancher", Attrs::root(0o755))?;
    root.mkdir(rke2::CONFIG_DIR, Attrs::root(0o700))?;
    root.write(
        rke2::CONFIG_YAML,
        rke2::config_yaml(cfg, a)?.as_bytes(),
        Attrs::root(0o600),
    )?;
    if let Some(r) = rke2::registries_yaml(cfg)? {
        root.write(rke2::REGISTRIES_YAML, r.as_bytes(), Attrs::root(0o600))?;
    }
    if let Some(env) = rke2::proxy_env(cfg)? {
        root.write(
            &format!("/etc/default/rke2-{}", a.role.name()),
            env.as_bytes(),
            Attrs::root(0o600),
        )?;
    }
    if a.role == Role::Server {
        let m = rke2::manifests(cfg)?;
        if !m.is_empty() {
            for d in ["/var/lib/rancher", "/var/lib/rancher/rke2"] {
                root.mkdir(d, Attrs::root(0o755))?;
            }
            root.mkdir("/var/lib/rancher/rke2/server", Attrs::root(0o700))?;
            root.mkdir(rke2::MANIFESTS_DIR, Attrs::root(0o700))?;
            for (name, body) in m {
                root.write(
                    &format!("{}/{name}", rke2::MANIFESTS_DIR),
                    body.as_bytes(),
                    Attrs::root(0o600),
                )?;
            }
        }
    }
    Ok(())
}

/// Regular files directly in `dir` of the image whose names pass `keep`, sorted.
fn image_files(
    root: &Root,
    dir: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, RenderError> {
    let host = root.host_path(dir)?;
    let mut names: Vec<String> = match fs::read_dir(&host) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| keep(n))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    Ok(names)
}

fn airgap(root: &Root) -> Result<(), RenderError> {
    for n in image_files(root, paths::AIRGAP_IMAGES, rke2::is_image_tarball)? {
        root.symlink(
            &format!("{}/{n}", rke2::AGENT_IMAGES_DIR),
            &format!("/{}/{n}", paths::AIRGAP_IMAGES),
        )?;
    }
    Ok(())
}

/// Links the manifests baked into the image into the server manifests directory; files the
/// node configuration writes there under the same name win (they are written in the rke2
/// phase, and an existing regular file is left alone).
fn baked_manifests(root: &Root) -> Result<(), RenderError> {
    let names = image_files(root, paths::BAKED_MANIFESTS, |n| {
        n.ends_with(".yaml") || n.ends_with(".yml")
    })?;
    if names.is_empty() {
        return Ok(());
    }
    for d in ["/var/lib/rancher", "/var/lib/rancher/rke2"] {
        root.mkdir(d, Attrs::root(0o755))?;
    }
    root.mkdir("/var/lib/rancher/rke2/server", Attrs::root(0o700))?;
    root.mkdir(rke2::MANIFESTS_DIR, Attrs::root(0o700))?;
    for n in names {
        let link = format!("{}/{n}", rke2::MANIFESTS_DIR);
        if root
            .host_path(&link)?
            .symlink_metadata()
            .is_ok_and(|m| m.is_file())
        {
            continue;
        }
        root.symlink(&link, &format!("/{}/{n}", paths::BAKED_MANIFESTS))?;
    }
    Ok(())
}

/// Removes both RKE2 services' enablement links (used before enabling one, and on failure).
pub fn disable_rke2(root: &Root) -> Result<(), RenderError> {
    for r in [Role::Server, Role::Agent] {
        disable_unit(root, r.unit())?;
    }
    Ok(())
}

fn enable_rke2(root: &Root, role: Role) -> Result<(), RenderError> {
    let unit = role.unit();
    let target = RKE2_UNIT_DIRS
        .iter()
        .map(|d| format!("{d}/{unit}"))
        .find(|p| root.exists(p))
        .unwrap_or_else(|| format!("{}/{unit}", RKE2_UNIT_DIRS[0]));
    root.symlink(
        &format!("{UNIT_DIR}/multi-user.target.wants/{unit}"),
        &format!("/{target}"),
    )?;
    Ok(())
}

fn stamp(root: &Root, input: &RenderInput<'_>) -> Result<(), RenderError> {
    let (role, node, init) = match input.rke2 {
        Some((_, a)) => (Some(a.role.name()), a.hostname.clone(), a.initializer),
        None => (None, None, false),
    };
    let doc = json!({
        "source": input.origin,
        "dialect": input.plan.dialect.name(),
        "config-sha256": input.config_sha256,
        "role": role,
        "node-name": node,
        "initializer": init,
    });
    root.mkdir("/var/lib", Attrs::root(0o755))?;
    root.mkdir(STATE_DIR, Attrs::root(0o700))?;
    let _ = root.remove(FAILED)?;
    let text =
        serde_json::to_string_pretty(&doc).map_err(|e| RenderError::Invalid(e.to_string()))?;
    root.write(STAMP, format!("{text}\n").as_bytes(), Attrs::root(0o600))?;
    Ok(())
}

/// Records why a run failed and makes sure no RKE2 service is enabled.
pub fn record_failure(root: &Root, reason: &str) -> Result<(), RenderError> {
    disable_rke2(root)?;
    root.mkdir(STATE_DIR, Attrs::root(0o700))?;
    root.write(FAILED, format!("{reason}\n").as_bytes(), Attrs::root(0o600))?;
    root.flush()?;
    Ok(())
}
