//! Users and groups written straight into the target root's passwd, group and shadow files
//! (no useradd: the target is a directory, not the running system). Idempotent: an existing user
//! is updated, never duplicated, so a re-run gives the same files.

use crate::atomic::{Attrs, FsError, Root};
use crate::plan::{GroupSpec, UserSpec};

const LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("user {user}: {msg}")]
    Invalid { user: String, msg: String },
    #[error("{file}: line {line} is malformed (expected {fields} colon-separated fields)")]
    Malformed {
        file: &'static str,
        line: usize,
        fields: usize,
    },
}

/// A colon-separated database file (passwd, group, shadow).
struct Db {
    file: &'static str,
    rows: Vec<Vec<String>>,
}

impl Db {
    fn load(root: &Root, file: &'static str, fields: usize) -> Result<Db, UserError> {
        let text = root.read(file, LIMIT)?.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let mut rows = Vec::new();
        for (i, l) in text.lines().enumerate() {
            if l.is_empty() {
                continue;
            }
            let r: Vec<String> = l.split(':').map(str::to_string).collect();
            if r.len() != fields {
                return Err(UserError::Malformed {
                    file,
                    line: i + 1,
                    fields,
                });
            }
            rows.push(r);
        }
        Ok(Db { file, rows })
    }
    fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.rows.iter().find(|r| r[0] == name)
    }
    fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.rows.iter_mut().find(|r| r[0] == name)
    }
    fn id_taken(&self, id: u32) -> bool {
        self.rows.iter().any(|r| r[2] == id.to_string())
    }
    fn text(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            s.push_str(&r.join(":"));
            s.push('\n');
        }
        s
    }
    fn save(&self, root: &Root, mode: u32) -> Result<(), UserError> {
        root.write(self.file, self.text().as_bytes(), Attrs::root(mode))?;
        Ok(())
    }
}

fn field_ok(s: &str) -> bool {
    !s.contains([':', '\n', '\r', '\0'])
}

fn free_id(a: &Db, b: &Db, system: bool) -> Option<u32> {
    let range: Box<dyn Iterator<Item = u32>> = if system {
        Box::new((100..1000).rev())
    } else {
        Box::new(1000..60000)
    };
    range
        .into_iter()
        .find(|&i| !a.id_taken(i) && !b.id_taken(i))
}

/// Looks up a user's uid in the root's passwd.
pub fn uid_of(root: &Root, name: &str) -> Result<Option<u32>, UserError> {
    let db = Db::load(root, "etc/passwd", 7)?;
    Ok(db.find(name).and_then(|r| r[2].parse().ok()))
}

/// Looks up a group's gid in the root's group file.
pub fn gid_of(root: &Root, name: &str) -> Result<Option<u32>, UserError> {
    let db = Db::load(root, "etc/group", 4)?;
    Ok(db.find(name).and_then(|r| r[2].parse().ok()))
}

/// Creates the groups that do not exist yet, then creates or updates the users, their home
/// directories and authorized keys.
pub fn apply(root: &Root, groups: &[GroupSpec], users: &[UserSpec]) -> Result<(), UserError> {
    if !groups.is_empty() {
        let mut group = Db::load(root, "etc/group", 4)?;
        let passwd = Db::load(root, "etc/passwd", 7)?;
        let mut added = false;
        for g in groups {
            if group.find(&g.name).is_some() {
                continue;
            }
            let gid = match g.gid {
                Some(id) => id,
                None => free_id(&passwd, &group, g.system).ok_or_else(|| UserError::Invalid {
                    user: g.name.clone(),
                    msg: "no free gid".into(),
                })?,
            };
            group.rows.push(vec![
                g.name.clone(),
                "x".into(),
                gid.to_string(),
                String::new(),
            ]);
            added = true;
        }
        if added {
            sync_gshadow(root, &group)?;
            group.save(root, 0o644)?;
        }
    }
    for u in users {
        apply_one(root, u)?;
    }
    Ok(())
}

/// Names with their numeric ids, as one passwd or group file lists them.
pub type Ids = Vec<(String, u32)>;

/// The users and groups of the root's passwd and group files.
pub fn accounts(root: &Root) -> Result<(Ids, Ids), UserError> {
    let ids = |db: Db| {
        db.rows
            .iter()
            .filter_map(|r| r[2].parse().ok().map(|id| (r[0].clone(), id)))
            .collect::<Vec<_>>()
    };
    Ok((
        ids(Db::load(root, "etc/passwd", 7)?),
        ids(Db::load(root, "etc/group", 4)?),
    ))
}

/// gshadow mirrors group (shadow-utils keeps both in step; grpck checks it).
fn sync_gshadow(root: &Root, group: &Db) -> Result<(), UserError> {
    if root.exists("etc/gshadow") {
        let mut gs = Db::load(root, "etc/gshadow", 4)?;
        let mut changed = false;
        for g in &group.rows {
            match gs.find_mut(&g[0]) {
                None => {
                    gs.rows
                        .push(vec![g[0].clone(), "!".into(), String::new(), g[3].clone()]);
                    changed = true;
                }
                Some(r) if r[3] != g[3] => {
                    r[3] = g[3].clone();
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if changed {
            gs.save(root, 0o640)?;
        }
    }
    Ok(())
}

fn apply_one(root: &Root, u: &UserSpec) -> Result<(), UserError> {
    let inv = |msg: String| UserError::Invalid {
        user: u.name.clone(),
        msg,
    };
    for f in [
        &u.gecos,
        &u.home,
        &u.shell,
        &u.password_hash,
        &u.primary_group,
    ]
    .into_iter()
    .flatten()
    {
        if !field_ok(f) {
            return Err(inv(format!("{f:?} contains ':' or a newline")));
        }
    }
    for k in &u.ssh_authorized_keys {
        if k.contains(['\n', '\r', '\0']) {
            return Err(inv("an ssh key contains a newline".into()));
        }
    }
    // Group file first, then passwd, then shadow: a run interrupted in between finds the group
    // already there and reuses it, reaching the same ids.
    let mut group = Db::load(root, "etc/group", 4)?;
    let mut passwd = Db::load(root, "etc/passwd", 7)?;
    if u.existing_only && passwd.find(&u.name).is_none() {
        return Err(inv(
            "does not exist; it is only named as a group member".into()
        ));
    }
    let (uid, gid, home) = if let Some(r) = passwd.find(&u.name) {
        let uid: u32 = r[2]
            .parse()
            .map_err(|_| inv("bad uid in etc/passwd".into()))?;
        let gid: u32 = r[3]
            .parse()
            .map_err(|_| inv("bad gid in etc/passwd".into()))?;
        if u.uid.is_some_and(|want| want != uid) {
            return Err(inv(format!(
                "exists with uid {uid}, configuration asks for a different uid"
            )));
        }
        (uid, gid, r[5].clone())
    } else {
        let uid = match u.uid {
            Some(id) if passwd.id_taken(id) => {
                return Err(inv(format!("uid {id} is already used by another user")))
            }
            Some(id) => id,
            None => free_id(&passwd, &group, u.system).ok_or_else(|| inv("no free uid".into()))?,
        };
        let gid = match &u.primary_group {
            Some(g) => group
                .find(g)
                .and_then(|r| r[2].parse().ok())
                .ok_or_else(|| inv(format!("primary group {g:?} does not exist in the image")))?,
            None => match group.find(&u.name) {
                Some(r) => r[2]
                    .parse()
                    .map_err(|_| inv("bad gid in etc/group".into()))?,
                None => {
                    let gid = if group.id_taken(uid) {
                        free_id(&passwd, &group, u.system)
                            .ok_or_else(|| inv("no free gid".into()))?
                    } else {
                        uid
                    };
                    group.rows.push(vec![
                        u.name.clone(),
                        "x".into(),
                        gid.to_string(),
                        String::new(),
                    ]);
                    gid
                }
            },
        };
        let home = u.home.clone().unwrap_or_else(|| {
            if u.name == "root" {
                "/root".into()
            } else {
                format!("/home/{}", u.name)
            }
        });
        let shell = u.shell.clone().unwrap_or_else(|| {
            if root.exists("bin/bash") || root.exists("usr/bin/bash") {
                "/bin/bash".into()
            } else {
                "/bin/sh".into()
            }
        });
        passwd.rows.push(vec![
            u.name.clone(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            u.gecos.clone().unwrap_or_default(),
            home.clone(),
            shell,
        ]);
        (uid, gid, home)
    };
    for g in &u.groups {
        let row = group
            .find_mut(g)
            .ok_or_else(|| inv(format!("group {g:?} does not exist in the image")))?;
        let mut members: Vec<String> = row[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        if !members.contains(&u.name) {
            members.push(u.name.clone());
            row[3] = members.join(",");
        }
    }
    sync_gshadow(root, &group)?;
    group.save(root, 0o644)?;
    passwd.save(root, 0o644)?;
    let mut shadow = Db::load(root, "etc/shadow", 9)?;
    let pw = u.password_hash.clone();
    match shadow.find_mut(&u.name) {
        Some(r) => {
            if let Some(h) = pw {
                r[1] = h;
            }
        }
        None => {
            let mut r = vec![String::new(); 9];
            r[0] = u.name.clone();
            // Locked unless a hash is given; the change date stays empty (no clock reads).
            r[1] = pw.unwrap_or_else(|| "!".into());
            shadow.rows.push(r);
        }
    }
    shadow.save(root, 0o640)?;

    let home_exists = root.exists(&home);
    if !u.no_create_home && !home_exists {
        root.mkdir(
            &home,
            Attrs {
                mode: 0o700,
                uid,
                gid,
            },
        )?;
    }
    if !u.ssh_authorized_keys.is_empty() {
        if !root.exists(&home) {
            return Err(inv(format!(
                "ssh keys given but home {home} does not exist (noCreateHome)"
            )));
        }
        let ssh = format!("{home}/.ssh");
        root.mkdir(
            &ssh,
            Attrs {
                mode: 0o700,
                uid,
                gid,
            },
        )?;
        let path = format!("{ssh}/authorized_keys");
        let existing = root.read(&path, LIMIT)?.unwrap_or_default();
        let mut text = String::from_utf8_lossy(&existing).into_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for k in &u.ssh_authorized_keys {
            let k = k.trim();
            if !k.is_empty() && !text.lines().any(|l| l.trim() == k) {
                text.push_str(k);
                text.push('\n');
            }
        }
        root.write(
            &path,
            text.as_bytes(),
            Attrs {
                mode: 0o600,
                uid,
                gid,
            },
        )?;
    }
    Ok(())
}
