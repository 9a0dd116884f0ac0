//! CIS profile (`security.cis`): the bundle's sysctl file as `/etc/sysctl.d/60-rke2-cis.conf`,
//! the `etcd` user and group rke2 requires, and a build-time check that the sysctl values rke2
//! verifies at start are what systemd-sysctl will set from the image's files.

use std::collections::BTreeMap;

use rke2_image_contract::manifest::Check;

use super::{check, PayloadError};
use crate::tree::{Blob, Inode, Kind, Tree};

pub const CIS_SYSCTL: &str = "etc/sysctl.d/60-rke2-cis.conf";
/// What rke2 checks in `/proc/sys` with `profile: cis`.
pub const REQUIRED: &[(&str, &str)] = &[
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];
/// systemd-sysctl's directories, highest precedence first.
const SYSCTL_DIRS: &[&str] = &[
    "etc/sysctl.d",
    "run/sysctl.d",
    "usr/local/lib/sysctl.d",
    "usr/lib/sysctl.d",
    "lib/sysctl.d",
];

fn file(data: impl Into<Vec<u8>>, mode: u32, epoch: u64) -> Inode {
    Inode::new(Kind::File(Blob::bytes(data)), mode, 0, 0, epoch)
}

pub fn apply(tree: &mut Tree, cis_conf: &str, epoch: u64) -> Result<Check, PayloadError> {
    tree.insert_resolved(CIS_SYSCTL.as_bytes(), file(cis_conf, 0o644, epoch))?;
    let ids = add_etcd_user(tree, epoch)?;
    let effective = effective_sysctls(tree)?;
    for (key, want) in REQUIRED {
        match effective.get(*key) {
            Some((v, _)) if v == want => {}
            Some((v, from)) => {
                return Err(PayloadError::Cis(format!(
                    "{key} would be {v} (set last by {from}) but rke2's CIS profile requires {want}; fix {from}"
                )))
            }
            None => return Err(PayloadError::Cis(format!("no sysctl file in the image sets {key} (rke2's CIS profile requires {want})"))),
        }
    }
    Ok(check(
        "cis-profile",
        "passed",
        format!(
            "60-rke2-cis.conf sets {}; etcd user/group {ids}",
            REQUIRED
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ))
}

fn read_text(tree: &Tree, path: &str) -> Result<Option<String>, PayloadError> {
    if tree
        .resolve(path.as_bytes(), true)
        .ok()
        .and_then(|p| tree.get(&p).map(|_| ()))
        .is_none()
    {
        return Ok(None);
    }
    tree.read_file(path.as_bytes())
        .map(|b| Some(String::from_utf8_lossy(&b).into_owned()))
        .map_err(|e| PayloadError::Invalid(format!("/{path}: {e}")))
}

/// Adds `etcd` as a system user and group (as `useradd -r -M -U -s /sbin/nologin etcd`
/// would, picking the highest id below 1000 free as both uid and gid). Returns `uid:gid`.
pub fn add_etcd_user(tree: &mut Tree, epoch: u64) -> Result<String, PayloadError> {
    let passwd = read_text(tree, "etc/passwd")?
        .ok_or_else(|| PayloadError::Cis("the base has no /etc/passwd".into()))?;
    let group = read_text(tree, "etc/group")?
        .ok_or_else(|| PayloadError::Cis("the base has no /etc/group".into()))?;
    let ids = |text: &str| -> Vec<(String, u32)> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let users = ids(&passwd);
    let groups = ids(&group);
    let u = users.iter().find(|(n, _)| n == "etcd").map(|(_, i)| *i);
    let g = groups.iter().find(|(n, _)| n == "etcd").map(|(_, i)| *i);
    if let (Some(u), Some(g)) = (u, g) {
        return Ok(format!("{u}:{g} (from the base)"));
    }
    let gid = match g {
        Some(g) => g,
        None => (100..1000u32)
            .rev()
            .find(|i| !groups.iter().any(|(_, x)| x == i) && !users.iter().any(|(_, x)| x == i))
            .ok_or_else(|| {
                PayloadError::Cis("no free system id below 1000 for the etcd group".into())
            })?,
    };
    let uid = match u {
        Some(u) => u,
        None if !users.iter().any(|(_, x)| *x == gid) => gid,
        None => (100..1000u32)
            .rev()
            .find(|i| !users.iter().any(|(_, x)| x == i))
            .ok_or_else(|| {
                PayloadError::Cis("no free system id below 1000 for the etcd user".into())
            })?,
    };
    let append =
        |tree: &mut Tree, path: &str, line: String, mode: u32| -> Result<(), PayloadError> {
            let mut text = read_text(tree, path)?.unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            let real = tree.resolve(path.as_bytes(), true)?;
            let (m, uid, gid) = tree
                .get(&real)
                .map(|i| (i.mode, i.uid, i.gid))
                .unwrap_or((mode, 0, 0));
            let mut inode = file(text, m, epoch);
            inode.uid = uid;
            inode.gid = gid;
            tree.insert(&real, inode)?;
            Ok(())
        };
    if u.is_none() {
        append(
            tree,
            "etc/passwd",
            format!("etcd:x:{uid}:{gid}:etcd user:/nonexistent:/sbin/nologin\n"),
            0o644,
        )?;
        if read_text(tree, "etc/shadow")?.is_some() {
            append(tree, "etc/shadow", "etcd:!:::::::\n".into(), 0o640)?;
        }
    }
    if g.is_none() {
        append(tree, "etc/group", format!("etcd:x:{gid}:\n"), 0o644)?;
        if read_text(tree, "etc/gshadow")?.is_some() {
            append(tree, "etc/gshadow", "etcd:!::\n".into(), 0o640)?;
        }
    }
    Ok(format!("{uid}:{gid}"))
}

/// The values systemd-sysctl would apply from the tree: `*.conf` files from its directories
/// (a name in an earlier directory masks the same name later), in file name order, then
/// `/etc/sysctl.conf`; later assignments win. Key -> (value, file that set it).
pub fn effective_sysctls(tree: &Tree) -> Result<BTreeMap<String, (String, String)>, PayloadError> {
    let mut chosen: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for dir in SYSCTL_DIRS {
        let Ok(real) = tree.resolve(dir.as_bytes(), true) else {
            continue;
        };
        let mut prefix = real.clone();
        prefix.push(b'/');
        for (p, _) in tree.iter() {
            let Some(name) = p.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            if name.contains(&b'/') || !name.ends_with(b".conf") {
                continue;
            }
            chosen
                .entry(name.to_vec())
                .or_insert_with(|| format!("{dir}/{}", String::from_utf8_lossy(name)));
        }
    }
    let mut files: Vec<String> = chosen.into_values().collect();
    files.push("etc/sysctl.conf".into());
    let mut out = BTreeMap::new();
    for f in files {
        let Some(text) = read_text(tree, &f)? else {
            continue;
        };
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                continue;
            };
            let k = k.trim().trim_start_matches('-').replace('/', ".");
            if k.contains('*') {
                continue;
            }
            out.insert(k, (v.trim().to_string(), format!("/{f}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(t: &mut Tree, p: &str, s: &str) {
        t.insert(p.as_bytes(), file(s, 0o644, 0)).unwrap();
    }

    #[test]
    fn systemd_sysctl_order_and_masking() {
        let mut t = Tree::new(0);
        put(
            &mut t,
            "usr/lib/sysctl.d/10-a.conf",
            "kernel.panic = 1\nvm/overcommit_memory=2\n",
        );
        put(&mut t, "usr/lib/sysctl.d/50-b.conf", "kernel.panic = 5\n");
        // Same name in /etc masks the vendor file entirely.
        put(&mut t, "etc/sysctl.d/50-b.conf", "# masked\n");
        put(
            &mut t,
            "etc/sysctl.d/60-c.conf",
            "-kernel.panic_on_oops = 1\n; comment\n",
        );
        put(&mut t, "etc/sysctl.conf", "vm.panic_on_oom=0\n");
        let e = effective_sysctls(&t).unwrap();
        assert_eq!(
            e["kernel.panic"],
            ("1".into(), "/usr/lib/sysctl.d/10-a.conf".into())
        );
        assert_eq!(e["vm.overcommit_memory"].0, "2");
        assert_eq!(e["kernel.panic_on_oops"].0, "1");
        assert_eq!(e["vm.panic_on_oom"].1, "/etc/sysctl.conf");
    }

    #[test]
    fn etcd_ids_avoid_taken_ones_and_keep_existing() {
        let mut t = Tree::new(0);
        put(
            &mut t,
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\na:x:999:999::/:/x\n",
        );
        put(&mut t, "etc/group", "root:x:0:\na:x:999:\nb:x:998:\n");
        assert_eq!(add_etcd_user(&mut t, 0).unwrap(), "997:997");
        assert_eq!(add_etcd_user(&mut t, 0).unwrap(), "997:997 (from the base)");
        let p = String::from_utf8(t.read_file(b"etc/passwd").unwrap()).unwrap();
        assert_eq!(p.matches("etcd:").count(), 1);
    }
}
