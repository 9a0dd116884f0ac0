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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    pub owner: Owner,
    /// Append to an existing file instead of replacing it (re-runs must not append twice: the
    /// appended block is only added when it is not already at the end).
    pub append: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    pub path: String,
    pub mode: u32,
    pub owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    pub contents: Option<String>,
    /// Some(true): enable, Some(false): disable, None: leave as is.
    pub enabled: Option<bool>,
    pub mask: bool,
    pub dropins: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
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
