//! `#cloud-config` user data (the subset a node of an immutable image can honour).
//!
//! Top-level `ssh_authorized_keys` go to `root` (the image has no distribution default user).
//! `bootcmd` runs on every boot, `runcmd` once, both through small units the render writes.
//! The `rke2:` key carries a native node configuration body (without apiVersion/kind).

use serde_json::Value;

use crate::dialects::native::{self, NativeConfig};
use crate::dialects::{charge, decode_base64, gunzip, Walker, MAX_DECODED_BYTES};
use crate::plan::{
    valid_hostname, valid_user_name, Command, Dialect, FileSpec, GroupSpec, IdRef, Ntp, Owner,
    Plan, UserSpec,
};

/// cloud-init's YAML: 1.1, where 0644 is octal and yes/no/on/off are booleans.
fn options() -> serde_saphyr::Options {
    let mut opts = super::yaml_options();
    opts.legacy_octal_numbers = true;
    opts.strict_booleans = false;
    // `!!binary` scalars are read as their base64 text; [`binary_entries`] tells which.
    opts.ignore_binary_tag_for_string = true;
    opts
}

/// Which `write_files` entries carry a `!!binary` content (cloud-init gets bytes there; a
/// `serde_json::Value` cannot hold bytes, so the tag is found by the entry's line span).
fn binary_entries(text: &str) -> Result<Vec<bool>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        write_files: Option<Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>>,
    }
    if !text.contains("!!binary") {
        return Ok(Vec::new());
    }
    let doc: Option<Doc> =
        serde_saphyr::from_str_with_options(text, options()).map_err(|e| super::yaml_error(&e))?;
    let spans = doc.and_then(|d| d.write_files).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = spans.iter().map(|s| s.defined.line() as usize).collect();
    Ok(starts
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let to = starts.get(i + 1).copied().unwrap_or(lines.len() + 1);
            lines
                .iter()
                .take(to.saturating_sub(1))
                .skip(from.saturating_sub(1))
                .any(|l| {
                    l.split_once("content:")
                        .is_some_and(|(_, v)| v.trim_start().starts_with("!!binary"))
                })
        })
        .collect())
}

/// Files the `rke2:` section writes; a `write_files` entry for one of them would be lost.
const RKE2_OWNED: [&str; 2] = [crate::rke2::CONFIG_YAML, crate::rke2::REGISTRIES_YAML];

pub fn parse(text: &str) -> Result<Plan, String> {
    let v: Value =
        serde_saphyr::from_str_with_options(text, options()).map_err(|e| super::yaml_error(&e))?;
    if v.is_null() {
        return Ok(Plan::new(Dialect::CloudConfig));
    }
    let binary = binary_entries(text)?;
    let mut plan = Plan::new(Dialect::CloudConfig);
    let mut w = Vec::new();
    let mut budget = MAX_DECODED_BYTES;
    let mut top = Walker::new("", &v)?;

    let preserve = top.bool("preserve_hostname")?.unwrap_or(false);
    let hostname = top.str("hostname")?;
    let fqdn = top.str("fqdn")?;
    if !preserve {
        if let Some(f) = fqdn {
            if !valid_hostname(f) {
                return Err(format!("fqdn {f:?} is not a valid host name"));
            }
            plan.fqdn = Some(f.to_string());
            plan.hostname = Some(
                hostname
                    .unwrap_or(f)
                    .split('.')
                    .next()
                    .unwrap_or(f)
                    .to_string(),
            );
        } else if let Some(h) = hostname {
            if !valid_hostname(h) {
                return Err(format!("hostname {h:?} is not a valid host name"));
            }
            plan.hostname = Some(h.split('.').next().unwrap_or(h).to_string());
            if h.contains('.') {
                plan.fqdn = Some(h.to_string());
            }
        }
    }
    top.ignore(
        "prefer_fqdn_over_hostname",
        "the short name is always used",
        &mut w,
    );
    top.ignore(
        "manage_etc_hosts",
        "an fqdn always gets a 127.0.1.1 line",
        &mut w,
    );

    // Top-level `groups` (created when missing): names, or one-key maps name -> members.
    let mut members: Vec<(String, String)> = Vec::new();
    for (i, g) in top.array("groups")?.iter().enumerate() {
        let key = format!("groups[{i}]");
        let add = |name: &str, plan: &mut Plan| {
            if !plan.groups.iter().any(|x| x.name == name) {
                plan.groups.push(GroupSpec {
                    key: key.clone(),
                    name: name.to_string(),
                    ..GroupSpec::default()
                });
            }
        };
        match g {
            Value::String(n) => add(n, &mut plan),
            Value::Object(m) => {
                for (n, list) in m {
                    add(n, &mut plan);
                    let names: Vec<String> = match list {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(a) => a
                            .iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<_>>()
                            .ok_or(format!("{key}.{n}: expected a list of user names"))?,
                        Value::Null => Vec::new(),
                        _ => return Err(format!("{key}.{n}: expected a list of user names")),
                    };
                    members.extend(names.into_iter().map(|u| (u, n.clone())));
                }
            }
            _ => return Err(format!("{key}: expected a group name or name: [members]")),
        }
    }
    for (i, u) in top.array("users")?.iter().enumerate() {
        if let Some(spec) = user(&format!("users[{i}]"), u, &mut w)? {
            // cloud-init creates a user's groups (and primary group) when they do not exist.
            for g in spec.groups.iter().chain(spec.primary_group.iter()) {
                if !plan.groups.iter().any(|x| &x.name == g) {
                    plan.groups.push(GroupSpec {
                        key: format!("users[{i}].groups"),
                        name: g.clone(),
                        ..GroupSpec::default()
                    });
                }
            }
            plan.users.push(spec);
        }
    }
    for (user, group) in members {
        match plan.users.iter_mut().find(|u| u.name == user) {
            Some(u) if !u.groups.contains(&group) => u.groups.push(group),
            Some(_) => {}
            None => plan.users.push(UserSpec {
                key: format!("groups ({group})"),
                name: user,
                groups: vec![group],
                existing_only: true,
                no_create_home: true,
                ..UserSpec::default()
            }),
        }
    }
    let root_keys = top.strings("ssh_authorized_keys")?;
    if !root_keys.is_empty() {
        plan.users.push(UserSpec {
            key: "ssh_authorized_keys".into(),
            name: "root".into(),
            ssh_authorized_keys: root_keys,
            ..UserSpec::default()
        });
    }
    for (i, f) in top.array("write_files")?.iter().enumerate() {
        plan.files.push(write_file(
            &format!("write_files[{i}]"),
            f,
            binary.get(i).copied().unwrap_or(false),
            &mut budget,
            &mut w,
        )?);
    }
    plan.bootcmd = commands(&mut top, "bootcmd")?;
    plan.runcmd = commands(&mut top, "runcmd")?;
    if let Some(n) = top.get("ntp") {
        let mut nw = Walker::new("ntp", n)?;
        let ntp = Ntp {
            enabled: nw.bool("enabled")?.unwrap_or(true),
            servers: nw.strings("servers")?,
            pools: nw.strings("pools")?,
        };
        if let Some(c) = nw.str("ntp_client")? {
            if !matches!(c, "auto" | "systemd-timesyncd") {
                w.push(format!(
                    "ntp.ntp_client: {c:?} ignored, systemd-timesyncd is used"
                ));
            }
        }
        nw.ignore("config", "systemd-timesyncd is configured directly", &mut w);
        nw.finish(&mut w);
        plan.ntp = Some(ntp);
    }
    if let Some(tz) = top.str("timezone")? {
        if tz.is_empty()
            || tz.starts_with('/')
            || tz.split('/').any(|c| c == ".." || c.is_empty())
            || !tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'))
        {
            return Err(format!(
                "timezone {tz:?} is not a zone name like Europe/Berlin"
            ));
        }
        plan.timezone = Some(tz.to_string());
    }
    if let Some(r) = top.get("rke2") {
        let mut body = r
            .as_object()
            .cloned()
            .ok_or("rke2: expected a mapping (a native node configuration without apiVersion)")?;
        body.entry("apiVersion")
            .or_insert_with(|| Value::String(native::API_VERSION.into()));
        body.entry("kind")
            .or_insert_with(|| Value::String(native::KIND.into()));
        let cfg: NativeConfig =
            serde_json::from_value(Value::Object(body)).map_err(|e| format!("rke2: {e}"))?;
        let sub = native::into_plan(cfg).map_err(|e| format!("rke2: {e}"))?;
        for f in &plan.files {
            let p = crate::atomic::components(&f.path).map(|c| c.join("/"));
            if let Some(owned) = RKE2_OWNED
                .iter()
                .find(|o| p.as_deref().is_ok_and(|p| p == o.trim_start_matches('/')))
            {
                return Err(format!(
                    "{}.path: {owned} is written from the rke2: section, so this entry would be \
                     lost; put its settings under rke2: (cluster.config, cluster.registries) or \
                     drop the rke2: section",
                    f.key
                ));
            }
        }
        if sub.hostname.is_some() && plan.hostname.is_some() {
            return Err("rke2.hostname and hostname/fqdn are both set; keep one".into());
        }
        if plan.hostname.is_none() {
            plan.hostname = sub.hostname;
        }
        plan.files.extend(sub.files);
        plan.users.extend(sub.users);
        plan.rke2 = sub.rke2;
    }

    for k in [
        "disk_setup",
        "fs_setup",
        "mounts",
        "growpart",
        "resize_rootfs",
    ] {
        top.refuse(k, "the image has a fixed partition layout")?;
    }
    top.refuse(
        "chpasswd",
        "passwords are not changed; use users[].passwd with a hash",
    )?;
    for (k, why) in [
        ("package_update", "the root filesystem is immutable"),
        ("package_upgrade", "the root filesystem is immutable"),
        (
            "package_reboot_if_required",
            "the root filesystem is immutable",
        ),
        (
            "packages",
            "the root filesystem is immutable; build packages into the image",
        ),
        ("apt", "the root filesystem is immutable"),
        ("snap", "the root filesystem is immutable"),
        ("yum_repos", "the root filesystem is immutable"),
        ("ssh_pwauth", "sshd configuration is part of the image"),
        ("disable_root", "sshd configuration is part of the image"),
        ("ssh_deletekeys", "host keys are generated by the image"),
        ("ssh_genkeytypes", "host keys are generated by the image"),
        ("ssh_keys", "host keys are generated by the image"),
        ("locale", "the locale is part of the image"),
        ("final_message", "not applicable"),
        ("power_state", "not applicable"),
        ("phone_home", "not applicable"),
        ("ca_certs", "trust anchors are part of the image"),
        (
            "network",
            "NoCloud network configuration is not supported yet; set rke2.network",
        ),
    ] {
        top.ignore(k, why, &mut w);
    }
    top.finish(&mut w);
    plan.warnings.extend(w);
    Ok(plan)
}

fn commands(top: &mut Walker<'_>, k: &'static str) -> Result<Vec<Command>, String> {
    let key = top.key(k);
    let mut out = Vec::new();
    for (i, c) in top.array(k)?.iter().enumerate() {
        match c {
            Value::String(s) => out.push(Command::Shell(s.clone())),
            Value::Array(a) => out.push(Command::Argv(
                a.iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s.clone()),
                        Value::Number(n) => Ok(n.to_string()),
                        _ => Err(format!("{key}[{i}]: expected strings")),
                    })
                    .collect::<Result<_, _>>()?,
            )),
            _ => {
                return Err(format!(
                    "{key}[{i}]: expected a string or a list of strings"
                ))
            }
        }
    }
    Ok(out)
}

fn user(p: &str, u: &Value, w: &mut Vec<String>) -> Result<Option<UserSpec>, String> {
    if let Value::String(s) = u {
        if s == "default" {
            w.push(format!(
                "{p}: \"default\" ignored (the image has no default user)"
            ));
            return Ok(None);
        }
        if !valid_user_name(s) {
            return Err(format!("{p}: {s:?} is not a valid user name"));
        }
        return Ok(Some(UserSpec {
            key: p.to_string(),
            name: s.clone(),
            ..UserSpec::default()
        }));
    }
    let mut uw = Walker::new(p.to_string(), u)?;
    let name = uw
        .str("name")?
        .ok_or(format!("{p}.name is required"))?
        .to_string();
    if !valid_user_name(&name) {
        return Err(format!("{p}.name {name:?} is not a valid user name"));
    }
    let groups = match uw.get("groups") {
        None => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_str()
                    .map(str::to_string)
                    .ok_or(format!("{p}.groups: expected strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{p}.groups: expected a string or a list")),
    };
    if uw.get("plain_text_passwd").is_some() {
        return Err(format!(
            "{p}.plain_text_passwd: plain-text passwords are not accepted; use passwd with a crypt hash"
        ));
    }
    let passwd = match (uw.str("passwd")?, uw.str("hashed_passwd")?) {
        (_, Some(h)) | (Some(h), None) => Some(h.to_string()),
        (None, None) => None,
    };
    // cloud-init's default is lock_passwd: true: the hash is set but the account locked.
    let lock = uw.bool("lock_passwd")?.unwrap_or(true);
    let passwd = match passwd {
        Some(h) if lock && !h.starts_with('!') => Some(format!("!{h}")),
        other => other,
    };
    let uid = match uw.get("uid") {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(format!("{p}.uid: out of range"))?,
        ),
        Some(Value::String(s)) => Some(
            s.parse()
                .map_err(|_| format!("{p}.uid: {s:?} is not a number"))?,
        ),
        Some(_) => return Err(format!("{p}.uid: expected a number")),
    };
    let system = uw.bool("system")?.unwrap_or(false);
    let spec = UserSpec {
        key: p.to_string(),
        uid,
        gecos: uw.str("gecos")?.map(str::to_string),
        home: uw.str("homedir")?.map(str::to_string),
        shell: uw.str("shell")?.map(str::to_string),
        password_hash: passwd,
        primary_group: uw.str("primary_group")?.map(str::to_string),
        groups,
        ssh_authorized_keys: uw.strings("ssh_authorized_keys")?,
        system,
        // cloud-init gives system users no home directory (useradd -M).
        no_create_home: uw.bool("no_create_home")?.unwrap_or(false) || system,
        name,
        existing_only: false,
    };
    uw.ignore("sudo", "sudo rules are not written; use groups", w);
    uw.ignore("ssh_import_id", "keys are not fetched from key servers", w);
    uw.ignore("no_user_group", "a user group is always created", w);
    uw.ignore("expiredate", "not supported", w);
    uw.ignore("inactive", "not supported", w);
    uw.ignore("selinux_user", "not supported", w);
    uw.finish(w);
    Ok(Some(spec))
}

fn write_file(
    p: &str,
    f: &Value,
    binary: bool,
    budget: &mut usize,
    w: &mut Vec<String>,
) -> Result<FileSpec, String> {
    let mut fw = Walker::new(p.to_string(), f)?;
    let path = fw
        .str("path")?
        .ok_or(format!("{p}.path is required"))?
        .to_string();
    let content = match fw.get("content") {
        None => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("{p}.content: expected text (or !!binary)")),
    };
    // A `!!binary` content is bytes already; `encoding` then only says whether they are gzip.
    let raw = if binary {
        decode_base64(&format!("{p}.content"), content)?
    } else {
        content.as_bytes().to_vec()
    };
    let encoding = fw
        .str("encoding")?
        .unwrap_or("text/plain")
        .to_ascii_lowercase();
    let raw = match encoding.as_str() {
        "text/plain" => raw,
        "b64" | "base64" if binary => raw,
        "b64" | "base64" => decode_base64(&format!("{p}.content"), content)?,
        "gz" | "gzip" if binary => gunzip(&format!("{p}.content"), &raw, budget)?,
        "gz" | "gzip" => {
            return Err(format!(
                "{p}.encoding: {encoding} needs binary content; give it as !!binary or use gz+b64"
            ))
        }
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => {
            let z = if binary {
                raw
            } else {
                decode_base64(&format!("{p}.content"), content)?
            };
            gunzip(&format!("{p}.content"), &z, budget)?
        }
        other => {
            return Err(format!(
                "{p}.encoding: {other:?} is not supported; use text/plain, b64, gzip or gz+b64"
            ))
        }
    };
    charge(p, raw.len(), budget)?;
    let mode = match fw.get("permissions") {
        Some(m) => super::parse_mode(&format!("{p}.permissions"), m, true)?,
        None => 0o644,
    };
    let owner = match fw.str("owner")? {
        None => "root:root",
        Some(o) => o,
    };
    let (u, g) = owner.split_once(':').unwrap_or((owner, ""));
    let r = |s: &str| {
        if s.is_empty() {
            None
        } else if let Ok(n) = s.parse() {
            Some(IdRef::Id(n))
        } else {
            Some(IdRef::Name(s.to_string()))
        }
    };
    let owner = Owner {
        user: r(u).or(Some(IdRef::Id(0))),
        group: r(g).or(Some(IdRef::Id(0))),
    };
    let append = fw.bool("append")?.unwrap_or(false);
    // Users are created before files are written, which is what `defer` asks for.
    fw.get("defer");
    fw.refuse("source", "remote sources are not fetched; use content")?;
    fw.finish(w);
    // cloud-init writes (or appends) and then sets the mode and owner, both defaulting to
    // 0644 root:root.
    let (contents, append) = if append {
        (None, raw)
    } else {
        (Some(raw), Vec::new())
    };
    Ok(FileSpec {
        key: p.to_string(),
        path,
        contents,
        append,
        mode: Some(mode),
        owner,
        overwrite: true,
    })
}
