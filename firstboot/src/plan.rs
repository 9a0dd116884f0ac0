//! The one internal plan every dialect maps onto; [`crate::render`] executes it.

use crate::dialects::native::NativeConfig;

/// A user or group reference: numeric id or a name resolved against the target root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub user: Option<IdRef>,
    pub group: Option<IdRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSpec {
    /// Where the entry is in the configuration (`storage.files[3]`), for messages.
    pub key: String,
    pub path: String,
    /// None: an existing file keeps its contents (a new file starts empty).
    pub contents: Option<Vec<u8>>,
    /// Appended after `contents` (or after the existing contents). A re-run does not append
    /// again: the Files phase leaves a marker when the configuration has appends.
    pub append: Vec<u8>,
    /// None: 0644, or the existing file's mode when its contents are kept.
    pub mode: Option<u32>,
    /// Unset parts: root, or the existing file's owner when its contents are kept.
    pub owner: Owner,
    /// An existing file may be replaced (Ignition `overwrite`; always for the other dialects).
    pub overwrite: bool,
}

impl FileSpec {
    /// Whether an existing file at the path keeps its contents (and, by default, its mode and
    /// owner): Ignition's rule for a file without `contents.source`.
    pub fn keeps_existing(&self) -> bool {
        self.contents.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirSpec {
    pub key: String,
    pub path: String,
    /// None: 0755, or the existing directory's mode.
    pub mode: Option<u32>,
    pub owner: Owner,
    /// A non-directory at the path may be replaced.
    pub overwrite: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSpec {
    pub key: String,
    pub path: String,
    pub target: String,
    /// Something else at the path may be replaced.
    pub overwrite: bool,
}

/// A group to create when it does not exist (Ignition `passwd.groups`, cloud-config `groups`
/// and the missing groups cloud-init creates for `users[].groups`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSpec {
    pub key: String,
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSpec {
    pub key: String,
    pub name: String,
    pub contents: Option<String>,
    /// Some(true): enable, Some(false): disable, None: leave as is.
    pub enabled: Option<bool>,
    pub mask: bool,
    pub dropins: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
    pub key: String,
    pub name: String,
    pub uid: Option<u32>,
    pub gecos: Option<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub password_hash: Option<String>,
    pub primary_group: Option<String>,
    pub groups: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub system: bool,
    pub no_create_home: bool,
    /// Only group memberships are added (cloud-config `groups: [{g: [user]}]`): the user must
    /// exist in the image or be created by this configuration.
    pub existing_only: bool,
}

/// A command from cloud-config `bootcmd`/`runcmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ntp {
    pub enabled: bool,
    pub servers: Vec<String>,
    pub pools: Vec<String>,
}

/// Which dialect produced a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Native,
    Ignition,
    CloudConfig,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Ignition => "ignition",
            Dialect::CloudConfig => "cloud-config",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub dialect: Dialect,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub files: Vec<FileSpec>,
    pub directories: Vec<DirSpec>,
    pub links: Vec<LinkSpec>,
    pub units: Vec<UnitSpec>,
    pub users: Vec<UserSpec>,
    pub groups: Vec<GroupSpec>,
    pub bootcmd: Vec<Command>,
    pub runcmd: Vec<Command>,
    pub ntp: Option<Ntp>,
    pub timezone: Option<String>,
    /// The RKE2 part (native configuration, or cloud-config's `rke2:` key).
    pub rke2: Option<Box<NativeConfig>>,
    /// Keys we do not support but could safely ignore, by name.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn new(dialect: Dialect) -> Self {
        Plan {
            dialect,
            hostname: None,
            fqdn: None,
            files: Vec::new(),
            directories: Vec::new(),
            links: Vec::new(),
            units: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            bootcmd: Vec::new(),
            runcmd: Vec::new(),
            ntp: None,
            timezone: None,
            rke2: None,
            warnings: Vec::new(),
        }
    }
}

/// Checks a hostname (RFC 1123 labels); used by every dialect.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a user or group name as useradd would accept it.
pub fn valid_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && !n.starts_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !n.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a systemd unit (or drop-in) file name.
pub fn valid_unit_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.contains('.')
        && !n.starts_with('.')
        && n.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':' | b'\\')
        })
}

/// Splits a node path into components, checking everything that does not need the target
/// root: not empty, not the root itself, no NUL, no `..`, no component over 255 bytes.
pub fn path_components(key: &str, path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err(format!(
            "{key}: the path is empty; give an absolute path like /etc/example"
        ));
    }
    let comps = crate::atomic::components(path)
        .map_err(|e| format!("{key}: {e}; give a path below / without `..`"))?;
    if let Some(c) = comps.iter().find(|c| c.len() > 255) {
        return Err(format!(
            "{key}: path {path:?} has a component of {} bytes; at most 255 are allowed",
            c.len()
        ));
    }
    Ok(comps)
}

/// A passwd/shadow/group field: no separator, no line break, no NUL.
fn field_ok(s: &str) -> bool {
    !s.contains([':', '\n', '\r', '\0'])
}

/// The checks every dialect's plan passes before `validate` says ok or `render` writes:
/// everything that does not depend on the target root. `render` calls it again, so the two
/// cannot disagree.
pub fn check_static(plan: &Plan) -> Result<(), String> {
    let mut links = Vec::new();
    for l in &plan.links {
        let c = path_components(&format!("{}.path", l.key), &l.path)?;
        if l.target.is_empty() || l.target.contains('\0') {
            return Err(format!(
                "{}.target: a link needs a target without NUL bytes",
                l.key
            ));
        }
        links.push((l.key.as_str(), c));
    }
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for f in &plan.files {
        entries.push((
            f.key.clone(),
            path_components(&format!("{}.path", f.key), &f.path)?,
        ));
    }
    for d in &plan.directories {
        entries.push((
            d.key.clone(),
            path_components(&format!("{}.path", d.key), &d.path)?,
        ));
    }
    for (key, c) in &links {
        entries.push((key.to_string(), c.clone()));
    }
    // A write below a link the same configuration creates would follow it on the node.
    for (key, c) in &entries {
        for (lkey, lc) in &links {
            if c.len() > lc.len() && c.starts_with(lc) {
                return Err(format!(
                    "{key}.path: it is below the link {lkey} (/{}) that this configuration \
                     creates; write to the link's target path instead",
                    lc.join("/")
                ));
            }
        }
    }
    // A file cannot also be a directory that another entry needs.
    for f in &plan.files {
        let fc = path_components("", &f.path)?;
        if let Some((key, _)) = entries
            .iter()
            .find(|(_, c)| c.len() > fc.len() && c.starts_with(&fc))
        {
            return Err(format!(
                "{}.path: {} is written as a file, but {key} puts an entry below it; make it a \
                 directory or move one of them",
                f.key, f.path
            ));
        }
    }
    for f in plan.files.iter().filter_map(|f| f.mode.map(|m| (f, m))) {
        if f.1 > 0o7777 {
            return Err(format!("{}.mode: {:o} is not a mode", f.0.key, f.1));
        }
    }
    for u in &plan.units {
        if !valid_unit_name(&u.name) {
            return Err(format!(
                "{}.name: {:?} is not a unit name; use a name like example.service",
                u.key, u.name
            ));
        }
        for (dn, _) in &u.dropins {
            if !valid_unit_name(dn) || !dn.ends_with(".conf") {
                return Err(format!(
                    "{}.dropins: {dn:?} is not a drop-in name; use a file name ending in .conf",
                    u.key
                ));
            }
        }
        if u.enabled == Some(true) && !u.mask {
            if let Some(c) = &u.contents {
                if !has_install_section(c) {
                    return Err(format!(
                        "{}.enabled: unit {} cannot be enabled, its contents have no [Install] \
                         WantedBy= or RequiredBy=; add one or drop enabled",
                        u.key, u.name
                    ));
                }
            }
        }
    }
    for g in &plan.groups {
        if !valid_user_name(&g.name) {
            return Err(format!(
                "{}.name: {:?} is not a valid group name",
                g.key, g.name
            ));
        }
        if g.gid == Some(0) && g.name != "root" {
            return Err(format!(
                "{}.gid: 0 is root's group; give another gid or none",
                g.key
            ));
        }
    }
    for u in &plan.users {
        if !valid_user_name(&u.name) {
            return Err(format!(
                "{}.name: {:?} is not a valid user name",
                u.key, u.name
            ));
        }
        if u.uid == Some(0) && u.name != "root" {
            return Err(format!(
                "{}.uid: 0 would make {} a second root account; give another uid or none",
                u.key, u.name
            ));
        }
        for (what, v) in [
            ("gecos", &u.gecos),
            ("home", &u.home),
            ("shell", &u.shell),
            ("password hash", &u.password_hash),
            ("primary group", &u.primary_group),
        ] {
            if let Some(v) = v {
                if !field_ok(v) {
                    return Err(format!(
                        "{}: the {what} contains ':', a line break or NUL, which would corrupt \
                         /etc/passwd or /etc/shadow; remove it",
                        u.key
                    ));
                }
            }
        }
        for g in &u.groups {
            if !valid_user_name(g) {
                return Err(format!("{}.groups: {g:?} is not a valid group name", u.key));
            }
        }
        if let Some(h) = &u.home {
            path_components(&format!("{}.home", u.key), h)?;
        }
        if u.ssh_authorized_keys
            .iter()
            .any(|k| k.contains(['\n', '\r', '\0']))
        {
            return Err(format!(
                "{}: an ssh authorized key contains a line break; give one key per list entry",
                u.key
            ));
        }
    }
    Ok(())
}

/// Whether a unit's text has WantedBy= or RequiredBy= in its [Install] section.
pub fn has_install_section(unit: &str) -> bool {
    !install_targets(unit).is_empty()
}

/// Wanted-by targets from a unit's [Install] section.
pub fn install_targets(unit: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    let mut in_install = false;
    for l in unit.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        for (key, suffix) in [("WantedBy=", "wants"), ("RequiredBy=", "requires")] {
            if let Some(v) = l.strip_prefix(key) {
                out.extend(v.split_whitespace().map(|t| (t.to_string(), suffix)));
            }
        }
    }
    out
}
