//! Ignition spec 3.x: `storage.{files,directories,links}`, `systemd.units`, `passwd.users`.
//!
//! Contents must be inline `data:` URLs: the agent does not fetch remote resources. Keys that
//! change disks or the kernel command line are errors (ignoring them would boot a node different
//! from the one described); other unsupported keys are warnings naming them.

use serde_json::Value;
use sha2::Digest;

use crate::dialects::{charge, decode_base64, gunzip, Walker, MAX_DECODED_BYTES};
use crate::plan::{
    valid_unit_name, valid_user_name, Dialect, DirSpec, FileSpec, GroupSpec, IdRef, LinkSpec,
    Owner, Plan, UnitSpec, UserSpec,
};

pub fn parse(v: &Value, minor: u32) -> Result<Plan, String> {
    let mut plan = Plan::new(Dialect::Ignition);
    let mut w = Vec::new();
    let mut budget = MAX_DECODED_BYTES;
    let mut top = Walker::new("", v)?;
    if let Some(ign) = top.get("ignition") {
        let mut i = Walker::new("ignition", ign)?;
        i.get("version");
        i.refuse(
            "config",
            "remote config merge/replace; inline everything in one config",
        )?;
        i.ignore("timeouts", "no remote fetches are made", &mut w);
        i.ignore("security", "no remote fetches are made", &mut w);
        i.ignore("proxy", "no remote fetches are made", &mut w);
        i.finish(&mut w);
    }
    let mut ctx = Ctx {
        minor,
        budget: &mut budget,
        w: &mut w,
    };
    if let Some(st) = top.get("storage") {
        let mut s = Walker::new("storage", st)?;
        for k in ["disks", "raid", "filesystems", "luks"] {
            s.refuse(k, "the image has a fixed partition layout")?;
        }
        s.refuse("trees", "local trees are not available at first boot")?;
        for (i, f) in s.array("files")?.iter().enumerate() {
            plan.files
                .push(file(&format!("storage.files[{i}]"), f, &mut ctx)?);
        }
        for (i, d) in s.array("directories")?.iter().enumerate() {
            let p = format!("storage.directories[{i}]");
            let mut dw = Walker::new(p.clone(), d)?;
            let path = node_path(&p, &mut dw)?;
            let mode = mode(&p, &mut dw, &mut ctx)?;
            let owner = owner(&mut dw)?;
            let overwrite = dw.bool("overwrite")?.unwrap_or(false);
            dw.finish(ctx.w);
            plan.directories.push(DirSpec {
                key: p,
                path,
                mode,
                owner,
                overwrite,
            });
        }
        for (i, l) in s.array("links")?.iter().enumerate() {
            let p = format!("storage.links[{i}]");
            let mut lw = Walker::new(p.clone(), l)?;
            let path = node_path(&p, &mut lw)?;
            let target = match lw.str("target")? {
                Some(t) if !t.is_empty() => t.to_string(),
                _ => return Err(format!("{p}.target is required; give the link's target")),
            };
            if lw.bool("hard")? == Some(true) {
                return Err(format!(
                    "{p}.hard: hard links are not supported; use a symlink"
                ));
            }
            lw.ignore("user", "symlink ownership is not applied", ctx.w);
            lw.ignore("group", "symlink ownership is not applied", ctx.w);
            let overwrite = lw.bool("overwrite")?.unwrap_or(false);
            lw.finish(ctx.w);
            plan.links.push(LinkSpec {
                key: p,
                path,
                target,
                overwrite,
            });
        }
        s.finish(ctx.w);
    }
    if let Some(sd) = top.get("systemd") {
        let mut s = Walker::new("systemd", sd)?;
        for (i, u) in s.array("units")?.iter().enumerate() {
            let p = format!("systemd.units[{i}]");
            let mut uw = Walker::new(p.clone(), u)?;
            let name = uw
                .str("name")?
                .ok_or(format!("{p}.name is required"))?
                .to_string();
            if !UNIT_SUFFIXES.iter().any(|x| name.ends_with(x)) || !valid_unit_name(&name) {
                return Err(format!(
                    "{p}.name: {name:?} is not a unit name; it must end in one of {}",
                    UNIT_SUFFIXES.join(" ")
                ));
            }
            let contents = uw.str("contents")?.map(str::to_string);
            let enabled = uw.bool("enabled")?;
            let mask = uw.bool("mask")?.unwrap_or(false);
            let mut dropins: Vec<(String, String)> = Vec::new();
            for (j, d) in uw.array("dropins")?.iter().enumerate() {
                let dp = format!("{p}.dropins[{j}]");
                let mut dw = Walker::new(dp.clone(), d)?;
                let dn = dw
                    .str("name")?
                    .ok_or(format!("{dp}.name is required"))?
                    .to_string();
                if !valid_unit_name(&dn) || !dn.ends_with(".conf") {
                    return Err(format!(
                        "{dp}.name: {dn:?} must be a file name ending in .conf"
                    ));
                }
                if dropins.iter().any(|(n, _)| *n == dn) {
                    return Err(format!("{dp}.name: {dn:?} appears twice; keep one"));
                }
                let dc = dw.str("contents")?.unwrap_or("").to_string();
                dw.finish(ctx.w);
                dropins.push((dn, dc));
            }
            uw.finish(ctx.w);
            if plan.units.iter().any(|x| x.name == name) {
                return Err(format!("{p}.name: unit {name} appears twice; keep one"));
            }
            plan.units.push(UnitSpec {
                key: p,
                name,
                contents,
                enabled,
                mask,
                dropins,
            });
        }
        s.finish(ctx.w);
    }
    if let Some(pw) = top.get("passwd") {
        let mut s = Walker::new("passwd", pw)?;
        for (i, u) in s.array("users")?.iter().enumerate() {
            let spec = user(&format!("passwd.users[{i}]"), u, ctx.w)?;
            if plan.users.iter().any(|x| x.name == spec.name) {
                return Err(format!(
                    "passwd.users[{i}].name: user {} appears twice; keep one",
                    spec.name
                ));
            }
            plan.users.push(spec);
        }
        for (i, g) in s.array("groups")?.iter().enumerate() {
            let p = format!("passwd.groups[{i}]");
            let mut gw = Walker::new(p.clone(), g)?;
            let name = gw
                .str("name")?
                .ok_or(format!("{p}.name is required"))?
                .to_string();
            let gid = id(&format!("{p}.gid"), gw.get("gid"))?;
            let system = gw.bool("system")?.unwrap_or(false);
            gw.refuse("passwordHash", "group passwords are not set; leave it out")?;
            gw.bool("shouldExist")?.filter(|e| !e).map_or(Ok(()), |_| {
                Err(format!("{p}.shouldExist: deleting groups is not supported"))
            })?;
            gw.finish(ctx.w);
            if plan.groups.iter().any(|x| x.name == name) {
                return Err(format!("{p}.name: group {name} appears twice; keep one"));
            }
            plan.groups.push(GroupSpec {
                key: p,
                name,
                gid,
                system,
            });
        }
        s.finish(ctx.w);
    }
    top.refuse(
        "kernelArguments",
        "the kernel command line is part of the signed boot entry",
    )?;
    top.finish(ctx.w);
    structure(&plan)?;
    plan.warnings = w;
    Ok(plan)
}

/// Unit name suffixes Ignition accepts (`config/v3_*/types/unit.go`).
const UNIT_SUFFIXES: [&str; 12] = [
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".snapshot",
    ".slice",
    ".scope",
];

struct Ctx<'a> {
    minor: u32,
    budget: &'a mut usize,
    w: &'a mut Vec<String>,
}

/// Whole-config rules of upstream's `types/config.go` and `storage.go`: one entry per path,
/// no file, directory or link where a unit or drop-in from this config goes.
fn structure(plan: &Plan) -> Result<(), String> {
    let mut seen: std::collections::BTreeMap<&str, &str> = Default::default();
    let nodes = plan
        .files
        .iter()
        .map(|f| (f.key.as_str(), f.path.as_str()))
        .chain(
            plan.directories
                .iter()
                .map(|d| (d.key.as_str(), d.path.as_str())),
        )
        .chain(plan.links.iter().map(|l| (l.key.as_str(), l.path.as_str())));
    let mut unit_paths = std::collections::BTreeSet::new();
    for u in &plan.units {
        if u.contents.as_deref().is_some_and(|c| !c.is_empty()) {
            unit_paths.insert(format!("/etc/systemd/system/{}", u.name));
        }
        for (dn, dc) in &u.dropins {
            if !dc.is_empty() {
                unit_paths.insert(format!("/etc/systemd/system/{}.d/{dn}", u.name));
            }
        }
    }
    for (key, path) in nodes {
        if let Some(other) = seen.insert(path, key) {
            return Err(format!(
                "{key}.path: {path} is also {other}.path; give each path once"
            ));
        }
        if unit_paths.contains(path) {
            return Err(format!(
                "{key}.path: {path} is where a unit or drop-in of systemd.units goes; \
                 give its contents there instead"
            ));
        }
    }
    Ok(())
}

/// A node path as upstream's `validatePath`: present, absolute and clean.
fn node_path(p: &str, w: &mut Walker<'_>) -> Result<String, String> {
    let path = w.str("path")?.unwrap_or("");
    if path.is_empty() {
        return Err(format!("{p}.path is required; give an absolute path"));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "{p}.path: {path:?} is relative; Ignition paths are absolute, e.g. /{path}"
        ));
    }
    if clean(path) != path {
        return Err(format!(
            "{p}.path: {path:?} is not clean; write it as {:?}",
            clean(path)
        ));
    }
    Ok(path.to_string())
}

/// Go's `path.Clean` for an absolute path.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

fn id(what: &str, v: Option<&Value>) -> Result<Option<u32>, String> {
    v.map(|v| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(format!("{what}: expected a number from 0 to 4294967295"))
    })
    .transpose()
}

/// `mode`: a decimal number up to 0o7777; setuid/setgid/sticky only from spec 3.6.0.
fn mode(p: &str, w: &mut Walker<'_>, ctx: &mut Ctx<'_>) -> Result<Option<u32>, String> {
    let key = format!("{p}.mode");
    let Some(m) = w.get("mode") else {
        return Ok(None);
    };
    if !m.is_number() {
        return Err(format!(
            "{key}: {m} is not a number; Ignition modes are decimal numbers, e.g. 420 for 0644"
        ));
    }
    let mut m = super::super::parse_mode(&key, m, true)?;
    if m & 0o7000 != 0 && ctx.minor < 6 {
        ctx.w.push(format!(
            "{key}: setuid/setgid/sticky bits ({:o}) are honoured only from spec 3.6.0 and are \
             dropped, as Ignition does; use ignition.version 3.6.0 to keep them",
            m & 0o7000
        ));
        m &= 0o777;
    }
    Ok(Some(m))
}

fn owner(w: &mut Walker<'_>) -> Result<Owner, String> {
    let mut o = Owner::default();
    for (k, slot) in [("user", &mut o.user), ("group", &mut o.group)] {
        if let Some(v) = w.get(k) {
            let key = w.key(k);
            let mut iw = Walker::new(key.clone(), v)?;
            let idv = id(&format!("{key}.id"), iw.get("id"))?;
            let name = iw.str("name")?.filter(|n| !n.is_empty());
            *slot = match (idv, name) {
                (Some(_), Some(_)) => {
                    return Err(format!("{key}: give either id or name, not both"))
                }
                (Some(id), None) => Some(IdRef::Id(id)),
                (None, Some(n)) => Some(IdRef::Name(n.to_string())),
                (None, None) => None,
            };
            let mut ignored = Vec::new();
            iw.finish(&mut ignored);
            if let Some(k) = ignored.first() {
                return Err(k.clone());
            }
        }
    }
    Ok(o)
}

/// Decodes an Ignition resource (`source`, `compression`, `verification`); None without a
/// source.
fn resource(p: &str, v: &Value, ctx: &mut Ctx<'_>) -> Result<Option<Vec<u8>>, String> {
    let mut r = Walker::new(p.to_string(), v)?;
    r.refuse("httpHeaders", "remote sources are not fetched")?;
    let src = r.str("source")?;
    let compression = r.str("compression")?;
    if let Some(c) = compression.filter(|c| !c.is_empty() && *c != "gzip") {
        return Err(format!(
            "{p}.compression: {c:?} is not supported; use gzip or leave it out"
        ));
    }
    let hash = match r.get("verification") {
        Some(ver) => {
            let mut vw = Walker::new(format!("{p}.verification"), ver)?;
            let h = vw.str("hash")?.map(str::to_string);
            vw.finish(ctx.w);
            h
        }
        None => None,
    };
    r.finish(ctx.w);
    let Some(src) = src else {
        if hash.is_some() {
            return Err(format!(
                "{p}.verification.hash is given without a source; add the source"
            ));
        }
        return Ok(None);
    };
    let data = if src.is_empty() {
        Vec::new()
    } else {
        data_url(&format!("{p}.source"), src)?
    };
    charge(p, data.len(), ctx.budget)?;
    let data = match compression {
        Some("gzip") => {
            let out = gunzip(&format!("{p}.source"), &data, ctx.budget)?;
            charge(p, out.len(), ctx.budget)?;
            out
        }
        _ => data,
    };
    if let Some(h) = hash {
        let hk = format!("{p}.verification.hash");
        let (kind, want) = h
            .split_once('-')
            .ok_or(format!("{hk}: {h:?} is not sha512-<hex> or sha256-<hex>"))?;
        let (got, len) = match kind {
            "sha512" => (hex::encode(sha2::Sha512::digest(&data)), 128),
            "sha256" => (hex::encode(sha2::Sha256::digest(&data)), 64),
            _ => {
                return Err(format!(
                    "{hk}: unknown hash type {kind:?}; use sha512 or sha256"
                ))
            }
        };
        if want.len() != len {
            return Err(format!(
                "{hk}: a {kind} sum has {len} hex digits, not {}",
                want.len()
            ));
        }
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!(
                "{hk}: the contents do not match ({kind} is {got}); fix the hash or the source"
            ));
        }
    }
    Ok(Some(data))
}

fn file(p: &str, f: &Value, ctx: &mut Ctx<'_>) -> Result<FileSpec, String> {
    let mut fw = Walker::new(p.to_string(), f)?;
    let path = node_path(p, &mut fw)?;
    let mode = mode(p, &mut fw, ctx)?;
    let owner = owner(&mut fw)?;
    let contents = match fw.get("contents") {
        Some(c) => resource(&format!("{p}.contents"), c, ctx)?,
        None => None,
    };
    let mut append = Vec::new();
    for (j, a) in fw.array("append")?.iter().enumerate() {
        append.extend(resource(&format!("{p}.append[{j}]"), a, ctx)?.unwrap_or_default());
    }
    let overwrite = fw.bool("overwrite")?.unwrap_or(false);
    if overwrite && contents.is_none() {
        return Err(format!(
            "{p}.overwrite: true needs contents.source (overwrite with what?); add a source or \
             set overwrite to false"
        ));
    }
    fw.finish(ctx.w);
    Ok(FileSpec {
        key: p.to_string(),
        path,
        contents,
        append,
        mode,
        owner,
        overwrite,
    })
}

fn user(p: &str, u: &Value, w: &mut Vec<String>) -> Result<UserSpec, String> {
    let mut uw = Walker::new(p.to_string(), u)?;
    let name = uw
        .str("name")?
        .ok_or(format!("{p}.name is required"))?
        .to_string();
    if !valid_user_name(&name) {
        return Err(format!("{p}.name: {name:?} is not a valid user name"));
    }
    if uw.bool("shouldExist")? == Some(false) {
        return Err(format!("{p}.shouldExist: deleting users is not supported"));
    }
    let uid = id(&format!("{p}.uid"), uw.get("uid"))?;
    let spec = UserSpec {
        key: p.to_string(),
        uid,
        gecos: uw.str("gecos")?.map(str::to_string),
        home: uw.str("homeDir")?.map(str::to_string),
        shell: uw.str("shell")?.map(str::to_string),
        password_hash: uw.str("passwordHash")?.map(str::to_string),
        primary_group: uw.str("primaryGroup")?.map(str::to_string),
        groups: uw.strings("groups")?,
        ssh_authorized_keys: uw.strings("sshAuthorizedKeys")?,
        system: uw.bool("system")?.unwrap_or(false),
        no_create_home: uw.bool("noCreateHome")?.unwrap_or(false),
        existing_only: false,
        name,
    };
    uw.ignore("noUserGroup", "a user group is always created", w);
    uw.ignore("noLogInit", "not applicable", w);
    uw.finish(w);
    Ok(spec)
}

/// Decodes a `data:` URL (RFC 2397).
pub fn data_url(what: &str, url: &str) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        format!(
            "{what}: only inline data: URLs are supported (got {}); inline the contents",
            url.split(':').next().unwrap_or("")
        )
    })?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or(format!("{what}: data URL without a comma"))?;
    if meta.split(';').any(|m| m == "base64") {
        decode_base64(
            what,
            &percent_decode(what, data)?
                .into_iter()
                .map(char::from)
                .collect::<String>(),
        )
    } else {
        percent_decode(what, data)
    }
}

fn percent_decode(what: &str, s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(format!("{what}: bad percent escape at offset {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}
