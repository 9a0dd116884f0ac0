//! Ignition spec 3.x: `storage.{files,directories,links}`, `systemd.units`, `passwd.users`.
//!
//! Contents must be inline `data:` URLs: the agent does not fetch remote resources. Keys that
//! change disks or the kernel command line are errors (ignoring them would boot a node different
//! from the one described); other unsupported keys are warnings naming them.

use serde_json::Value;
use sha2::Digest;

use crate::dialects::{charge, decode_base64, gunzip, Walker, MAX_DECODED_BYTES};
use crate::plan::{
    valid_unit_name, valid_user_name, Dialect, DirSpec, FileSpec, IdRef, LinkSpec, Owner, Plan,
    UnitSpec, UserSpec,
};

pub fn parse(v: &Value) -> Result<Plan, String> {
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
    if let Some(st) = top.get("storage") {
        let mut s = Walker::new("storage", st)?;
        for k in ["disks", "raid", "filesystems", "luks"] {
            s.refuse(k, "the image has a fixed partition layout")?;
        }
        s.refuse("trees", "local trees are not available at first boot")?;
        for (i, f) in s.array("files")?.iter().enumerate() {
            plan.files.push(file(
                &format!("storage.files[{i}]"),
                f,
                &mut budget,
                &mut w,
            )?);
        }
        for (i, d) in s.array("directories")?.iter().enumerate() {
            let p = format!("storage.directories[{i}]");
            let mut dw = Walker::new(p.clone(), d)?;
            let path = dw
                .str("path")?
                .ok_or(format!("{p}.path is required"))?
                .to_string();
            let mode = match dw.get("mode") {
                Some(m) => super::super::parse_mode(&format!("{p}.mode"), m, true)?,
                None => 0o755,
            };
            let owner = owner(&mut dw)?;
            dw.get("overwrite");
            dw.finish(&mut w);
            plan.directories.push(DirSpec { path, mode, owner });
        }
        for (i, l) in s.array("links")?.iter().enumerate() {
            let p = format!("storage.links[{i}]");
            let mut lw = Walker::new(p.clone(), l)?;
            let path = lw
                .str("path")?
                .ok_or(format!("{p}.path is required"))?
                .to_string();
            let target = lw
                .str("target")?
                .ok_or(format!("{p}.target is required"))?
                .to_string();
            if lw.bool("hard")? == Some(true) {
                return Err(format!(
                    "{p}.hard: hard links are not supported; use a symlink"
                ));
            }
            lw.ignore("user", "symlink ownership is not applied", &mut w);
            lw.ignore("group", "symlink ownership is not applied", &mut w);
            lw.get("overwrite");
            lw.finish(&mut w);
            plan.links.push(LinkSpec { path, target });
        }
        s.finish(&mut w);
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
            if !valid_unit_name(&name) {
                return Err(format!("{p}.name {name:?} is not a unit name"));
            }
            let contents = uw.str("contents")?.map(str::to_string);
            let enabled = uw.bool("enabled")?;
            let mask = uw.bool("mask")?.unwrap_or(false);
            let mut dropins = Vec::new();
            for (j, d) in uw.array("dropins")?.iter().enumerate() {
                let dp = format!("{p}.dropins[{j}]");
                let mut dw = Walker::new(dp.clone(), d)?;
                let dn = dw
                    .str("name")?
                    .ok_or(format!("{dp}.name is required"))?
                    .to_string();
                if !valid_unit_name(&dn) || !dn.ends_with(".conf") {
                    return Err(format!(
                        "{dp}.name {dn:?} must be a file name ending in .conf"
                    ));
                }
                let dc = dw.str("contents")?.unwrap_or("").to_string();
                dw.finish(&mut w);
                dropins.push((dn, dc));
            }
            uw.finish(&mut w);
            plan.units.push(UnitSpec {
                name,
                contents,
                enabled,
                mask,
                dropins,
            });
        }
        s.finish(&mut w);
    }
    if let Some(pw) = top.get("passwd") {
        let mut s = Walker::new("passwd", pw)?;
        for (i, u) in s.array("users")?.iter().enumerate() {
            plan.users
                .push(user(&format!("passwd.users[{i}]"), u, &mut w)?);
        }
        s.ignore(
            "groups",
            "group creation is not supported; use existing groups",
            &mut w,
        );
        s.finish(&mut w);
    }
    top.refuse(
        "kernelArguments",
        "the kernel command line is part of the signed boot entry",
    )?;
    top.finish(&mut w);
    plan.warnings = w;
    Ok(plan)
}

fn owner(w: &mut Walker<'_>) -> Result<Owner, String> {
    let mut o = Owner::default();
    for (k, slot) in [("user", &mut o.user), ("group", &mut o.group)] {
        if let Some(v) = w.get(k) {
            let key = w.key(k);
            let mut iw = Walker::new(key.clone(), v)?;
            let id = iw.get("id").map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(format!("{key}.id: expected a number"))
            });
            let name = iw.str("name")?;
            *slot = match (id, name) {
                (Some(id), _) => Some(IdRef::Id(id?)),
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

/// Decodes an Ignition resource (`source`, `compression`, `verification`).
fn resource(
    p: &str,
    v: &Value,
    budget: &mut usize,
    w: &mut Vec<String>,
) -> Result<Vec<u8>, String> {
    let mut r = Walker::new(p.to_string(), v)?;
    r.refuse("httpHeaders", "remote sources are not fetched")?;
    let data = match r.str("source")? {
        None => Vec::new(),
        Some(src) => data_url(&format!("{p}.source"), src)?,
    };
    charge(p, data.len(), budget)?;
    let data = match r.str("compression")? {
        None | Some("") => data,
        Some("gzip") => {
            let out = gunzip(p, &data, budget)?;
            charge(p, out.len(), budget)?;
            out
        }
        Some(c) => return Err(format!("{p}.compression {c:?}: only gzip is supported")),
    };
    if let Some(ver) = r.get("verification") {
        let mut vw = Walker::new(format!("{p}.verification"), ver)?;
        if let Some(h) = vw.str("hash")? {
            let (kind, want) = h.split_once('-').ok_or(format!(
                "{p}.verification.hash {h:?}: expected sha512-<hex> or sha256-<hex>"
            ))?;
            let got = match kind {
                "sha512" => hex::encode(sha2::Sha512::digest(&data)),
                "sha256" => hex::encode(sha2::Sha256::digest(&data)),
                _ => return Err(format!("{p}.verification.hash: unknown hash type {kind:?}")),
            };
            if !got.eq_ignore_ascii_case(want) {
                return Err(format!(
                    "{p}.verification.hash: contents do not match ({kind} is {got})"
                ));
            }
        }
        vw.finish(w);
    }
    r.finish(w);
    Ok(data)
}

fn file(p: &str, f: &Value, budget: &mut usize, w: &mut Vec<String>) -> Result<FileSpec, String> {
    let mut fw = Walker::new(p.to_string(), f)?;
    let path = fw
        .str("path")?
        .ok_or(format!("{p}.path is required"))?
        .to_string();
    let mode = match fw.get("mode") {
        Some(m) => super::super::parse_mode(&format!("{p}.mode"), m, true)?,
        None => 0o644,
    };
    let owner = owner(&mut fw)?;
    let mut contents = Vec::new();
    let mut append = false;
    if let Some(c) = fw.get("contents") {
        contents = resource(&format!("{p}.contents"), c, budget, w)?;
    }
    let appends = fw.array("append")?;
    if !appends.is_empty() {
        if fw.obj.get("contents").is_some_and(|c| !c.is_null()) {
            return Err(format!(
                "{p}: contents and append together are not supported"
            ));
        }
        append = true;
        for (j, a) in appends.iter().enumerate() {
            contents.extend(resource(&format!("{p}.append[{j}]"), a, budget, w)?);
        }
    }
    fw.get("overwrite");
    fw.finish(w);
    Ok(FileSpec {
        path,
        contents,
        mode,
        owner,
        append,
    })
}

fn user(p: &str, u: &Value, w: &mut Vec<String>) -> Result<UserSpec, String> {
    let mut uw = Walker::new(p.to_string(), u)?;
    let name = uw
        .str("name")?
        .ok_or(format!("{p}.name is required"))?
        .to_string();
    if !valid_user_name(&name) {
        return Err(format!("{p}.name {name:?} is not a valid user name"));
    }
    if uw.bool("shouldExist")? == Some(false) {
        return Err(format!("{p}.shouldExist: deleting users is not supported"));
    }
    let uid = match uw.get("uid") {
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(format!("{p}.uid: expected a number"))?,
        ),
        None => None,
    };
    let spec = UserSpec {
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
