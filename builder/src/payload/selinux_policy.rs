//! SELinux for the rke2 paths. A base whose policy already labels rke2 (container-selinux and
//! rke2-selinux) keeps its own labels. On a base without (Debian's refpolicy), our CIL module
//! `rke2_image` is compiled into the image's own policy with `semodule` against a copy of the
//! image's policy store taken out of the tree, rootless (`semodule -p <copy> -N`: no reload,
//! no host policy touched); the rebuilt store and policy files replace the tree's. The label
//! stage then labels from the new `file_contexts`, so nothing is relabelled at boot.

use std::path::Path;
use std::process::Command;

use rke2_image_contract::manifest::Check;

use super::{check, PayloadError};
use crate::tree::{Blob, Inode, Kind, Tree};

pub const MODULE_NAME: &str = "rke2_image";
pub const MODULE_CIL: &str = include_str!("rke2_image.cil");

fn err(m: impl Into<String>) -> PayloadError {
    PayloadError::Selinux(m.into())
}

fn policy_type(tree: &Tree) -> Result<String, PayloadError> {
    let cfg = tree.read_file(b"etc/selinux/config").map_err(|e| {
        err(format!(
            "/etc/selinux/config: {e}; the base has no SELinux policy"
        ))
    })?;
    let cfg = String::from_utf8_lossy(&cfg);
    let t = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "default".into());
    if t.is_empty() || t.contains('/') || t.starts_with('.') {
        return Err(err(format!("/etc/selinux/config: bad SELINUXTYPE {t:?}")));
    }
    Ok(t)
}

/// Writes the tree's subtree `prefix` below `dest` (files, dirs, symlinks).
fn export(tree: &Tree, prefix: &str, dest: &Path) -> Result<(), PayloadError> {
    let io = |p: &Path, e: std::io::Error| err(format!("{}: {e}", p.display()));
    let real = tree.resolve(prefix.as_bytes(), true)?;
    let mut wanted = Vec::new();
    for (p, id) in tree.iter() {
        let Some(rest) = p.strip_prefix(real.as_slice()) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with(b"/")) {
            continue;
        }
        let rel = String::from_utf8_lossy(rest.strip_prefix(b"/").unwrap_or(rest)).into_owned();
        let target = dest.join(prefix).join(&rel);
        match &tree.inode(id).kind {
            Kind::Dir => std::fs::create_dir_all(&target).map_err(|e| io(&target, e))?,
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(String::from_utf8_lossy(t).as_ref(), &target)
                    .map_err(|e| io(&target, e))?
            }
            Kind::File(b) => wanted.push((target, b.clone())),
            _ => {}
        }
    }
    let refs: Vec<(usize, &Blob)> = wanted
        .iter()
        .enumerate()
        .map(|(i, (_, b))| (i, b))
        .collect();
    Tree::read_blobs(&refs, &mut |i, r| {
        let mut f = std::fs::File::create(&wanted[i].0)?;
        std::io::copy(r, &mut f).map(|_| ())
    })
    .map_err(|e| err(format!("exporting /{prefix}: {e}")))
}

/// Replaces the tree's subtree `prefix` by the directory `src/prefix`.
fn import(tree: &mut Tree, prefix: &str, src: &Path, epoch: u64) -> Result<usize, PayloadError> {
    let real = tree.resolve(prefix.as_bytes(), true)?;
    let old_mode = tree.get(&real).map(|i| i.mode).unwrap_or(0o755);
    // Modes come from the tree (or fixed defaults for new files), never from the host's umask.
    let mut prefix_slash = real.clone();
    prefix_slash.push(b'/');
    let old_modes: std::collections::BTreeMap<Vec<u8>, u32> = tree
        .iter()
        .filter(|(p, _)| p.starts_with(&prefix_slash))
        .map(|(p, id)| (p.to_vec(), tree.inode(id).mode))
        .collect();
    tree.remove(&real);
    tree.insert(&real, Inode::dir(old_mode, epoch))?;
    let mut n = 0;
    let mut stack = vec![(src.join(prefix), real.clone())];
    while let Some((dir, tpath)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(format!("{}: {e}", dir.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("{}: {e}", dir.display())))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name();
            let tp = crate::tree::join(&tpath, name.to_string_lossy().as_bytes());
            let md =
                std::fs::symlink_metadata(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
            let default = if md.is_dir() { 0o755 } else { 0o644 };
            let mode = old_modes.get(&tp).copied().unwrap_or(default);
            if md.is_dir() {
                tree.insert(&tp, Inode::dir(mode, epoch))?;
                stack.push((p, tp));
            } else if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
                tree.insert(
                    &tp,
                    Inode::new(
                        Kind::Symlink(t.to_string_lossy().as_bytes().to_vec()),
                        0o777,
                        0,
                        0,
                        epoch,
                    ),
                )?;
            } else if md.is_file() {
                let data = std::fs::read(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
                tree.insert(
                    &tp,
                    Inode::new(Kind::File(Blob::bytes(data)), mode, 0, 0, epoch),
                )?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Whether the tree's policy already knows rke2 (rke2-selinux / container-selinux installed).
pub fn base_labels_rke2(tree: &Tree, ptype: &str) -> bool {
    let fc = format!("etc/selinux/{ptype}/contexts/files/file_contexts");
    tree.read_file(fc.as_bytes())
        .map(|b| {
            let s = String::from_utf8_lossy(&b);
            s.lines()
                .any(|l| l.starts_with("/usr/bin/rke2") || l.starts_with("/var/lib/rancher/rke2"))
        })
        .unwrap_or(false)
}

pub fn apply(
    tree: &mut Tree,
    epoch: u64,
    log: &mut dyn FnMut(&str),
) -> Result<Check, PayloadError> {
    let ptype = policy_type(tree)?;
    if base_labels_rke2(tree, &ptype) {
        return Ok(check(
            "selinux-rke2-policy",
            "passed",
            "the base policy labels rke2 paths itself (rke2-selinux); its labels are used",
        ));
    }
    let etc = format!("etc/selinux/{ptype}");
    let store = format!("var/lib/selinux/{ptype}");
    if tree
        .lookup(&tree.resolve(store.as_bytes(), true)?)
        .is_none()
    {
        return Err(err(format!("/{store} (the policy module store) is missing from the base; add policycoreutils and selinux-policy-{ptype}")));
    }
    let tmp = tempfile::tempdir().map_err(|e| err(format!("temporary directory: {e}")))?;
    export(tree, &etc, tmp.path())?;
    export(tree, &store, tmp.path())?;
    // The copy's own semanage.conf: never regenerate home directory contexts from the build
    // host's passwd (not reproducible, not the image's users).
    std::fs::write(tmp.path().join("etc/selinux/semanage.conf"), "module-store = direct\nexpand-check = 0\ndisable-genhomedircon = true\nusepasswd = false\n")
        .map_err(|e| err(format!("semanage.conf: {e}")))?;
    let cil = tmp.path().join(format!("{MODULE_NAME}.cil"));
    std::fs::write(&cil, MODULE_CIL).map_err(|e| err(format!("{}: {e}", cil.display())))?;
    let out = Command::new("semodule")
        .arg("-N")
        .arg("-p")
        .arg(tmp.path())
        .args(["-s", &ptype, "-i"])
        .arg(&cil)
        .output()
        .map_err(|e| {
            err(format!(
                "running semodule: {e}; install policycoreutils on the build host"
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "semodule -i {MODULE_NAME}.cil failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let a = import(tree, &etc, tmp.path(), epoch)?;
    let b = import(tree, &store, tmp.path(), epoch)?;
    log(&format!("rke2: SELinux module {MODULE_NAME} compiled into the {ptype} policy ({a} + {b} policy files replaced)"));
    Ok(check(
        "selinux-rke2-policy",
        "passed",
        format!("module {MODULE_NAME} compiled into the image's {ptype} policy with semodule"),
    ))
}
