//! Tree composition: host overlay directories merged onto the base tree, then the files the
//! build generates itself (os-release identity, image-info, machine-id, fstab) and the removal
//! of per-node state that must never be baked into an image.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rke2_image_contract::paths;
use sha2::{Digest, Sha256};

use crate::tree::{self, Blob, Inode, Kind, ReadError, Tree, TreeError};

/// A host directory merged into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Directory on the build host.
    pub source: PathBuf,
    /// Where `source` lands in the image (`/` by default).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// `(glob relative to source, mode)`; the last matching glob wins. `*` and `?` stay inside
    /// one path component, `**` spans any number of components (`usr/bin/*`, `**/*.sh`).
    pub modes: Vec<(String, u32)>,
}

impl Overlay {
    /// `source` onto `/`, owned by 0:0, no mode overrides.
    pub fn new(source: impl Into<PathBuf>) -> Overlay {
        Overlay {
            source: source.into(),
            target: "/".into(),
            uid: 0,
            gid: 0,
            modes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayStats {
    /// Regular files added.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Digest of the overlay's content as it lands in the image: every entry in sorted path
    /// order with its type, final mode, symlink target and file bytes.
    pub sha256: String,
}

/// What the image says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// os-release `IMAGE_ID`: lower-case letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// os-release `IMAGE_VERSION`: same characters.
    pub version: String,
    /// Replaces the base's `PRETTY_NAME` when given.
    pub pretty_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("overlay {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "overlay source {0}: not a directory (an overlay is a directory tree on the build host)"
    )]
    SourceNotDir(PathBuf),
    #[error(
        "overlay {path}: is a {kind}; overlays may hold only directories, regular files and \
         symlinks (remove it from the overlay; device nodes come from the base or udev)"
    )]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("overlay {source_dir}: {path} {problem}")]
    Refused {
        source_dir: PathBuf,
        path: String,
        problem: String,
    },
    #[error("overlay {source_dir}: cannot place {path} in the image: {error}")]
    Tree {
        source_dir: PathBuf,
        path: String,
        error: TreeError,
    },
    #[error("overlay {source_dir}: mode {mode:#o} for glob {pattern:?} is not a permission mode (at most 0o7777)")]
    BadMode {
        source_dir: PathBuf,
        pattern: String,
        mode: u32,
    },
    #[error("overlay {source_dir}: mode glob {pattern:?} matches nothing (typo? globs are relative to the overlay directory)")]
    GlobUnmatched {
        source_dir: PathBuf,
        pattern: String,
    },
    #[error(
        "overlay {path}: changed while it was read (metadata said {expected} bytes, read {actual})"
    )]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("image identity: {field} {value:?} may only hold lower-case letters, digits, '.', '_' and '-' (os-release(5)) and must not be empty")]
    BadIdentity { field: &'static str, value: String },
    #[error("generated file {path}: {error}")]
    Generated { path: String, error: ReadError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ComposeError + '_ {
    move |source| ComposeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Shell-style glob over `/`-separated byte paths: `*` and `?` never match `/`; a `**`
/// component matches zero or more whole components.
pub fn glob_match(pattern: &[u8], path: &[u8]) -> bool {
    let pat: Vec<&[u8]> = pattern.split(|&b| b == b'/').collect();
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    match_components(&pat, &comps)
}

/// `**` handled by dynamic programming over (pattern, path) component positions: polynomial
/// however many `**` a pattern has (a recursive search is exponential in them).
fn match_components(pat: &[&[u8]], comps: &[&[u8]]) -> bool {
    // ok[j]: pat[i..] matches comps[j..], filled from the last pattern component back.
    let mut ok = vec![false; comps.len() + 1];
    ok[comps.len()] = true;
    for p in pat.iter().rev() {
        let mut next = vec![false; comps.len() + 1];
        if *p == b"**" {
            // Zero components, or one and still `**`.
            for j in (0..=comps.len()).rev() {
                next[j] = ok[j] || (j < comps.len() && next[j + 1]);
            }
        } else {
            for j in 0..comps.len() {
                next[j] = ok[j + 1] && match_component(p, comps[j]);
            }
        }
        ok = next;
    }
    ok[0]
}

/// `*` and `?` within one component, without backtracking blow-up: the classic single
/// restart point (only the last `*` seen matters), linear in practice, O(p·c) at worst.
fn match_component(p: &[u8], c: &[u8]) -> bool {
    let (mut pi, mut ci) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ci < c.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ci));
                pi += 1;
            }
            Some(&x) if x == b'?' || x == c[ci] => {
                pi += 1;
                ci += 1;
            }
            _ => match star {
                Some((sp, sc)) => {
                    pi = sp + 1;
                    ci = sc + 1;
                    star = Some((sp, sc + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// One host entry, relative path as bytes.
struct HostEntry {
    rel: Vec<u8>,
    host: PathBuf,
    meta: fs::Metadata,
}

/// Every entry below `root` (not `root` itself), never following symlinks.
fn walk(root: &Path) -> Result<Vec<HostEntry>, ComposeError> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let host = entry.path();
            let meta = fs::symlink_metadata(&host).map_err(io_err(&host))?;
            let r = tree::join(&rel, entry.file_name().as_bytes());
            if meta.is_dir() {
                stack.push((host.clone(), r.clone()));
            }
            out.push(HostEntry { rel: r, host, meta });
        }
    }
    // Sorted byte order: deterministic digest, and a parent always precedes its children.
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn update_field(h: &mut Sha256, data: &[u8]) {
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// sha256 of a host file's bytes, checking it still has the length its metadata said.
fn hash_host_file(path: &Path, expected: u64) -> Result<[u8; 32], ComposeError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut actual = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        actual += n as u64;
    }
    if actual != expected {
        return Err(ComposeError::Changed {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    Ok(h.finalize().into())
}

/// Adds a host directory tree to the image tree, following symlinks in the tree's parents
/// (an overlay's `lib/systemd/...` lands in `usr/lib/...` on merged /usr) but never following
/// symlinks on the host (a host symlink becomes a symlink in the image).
///
/// Owner and mode are defined here, not taken from the build host: owner from the spec;
/// directories 0755, files 0644, or 0755 when the host file is user-executable; then `modes`
/// overrides by glob. mtime is `epoch`. A directory that already exists in the tree keeps its
/// metadata (an overlay adds to `/etc`, it does not re-own it) unless a glob names it.
/// Sockets, devices and fifos on the host are refused.
pub fn add_overlay(
    tree: &mut Tree,
    overlay: &Overlay,
    epoch: u64,
) -> Result<OverlayStats, ComposeError> {
    let src = &overlay.source;
    let src_meta = fs::metadata(src).map_err(io_err(src))?;
    if !src_meta.is_dir() {
        return Err(ComposeError::SourceNotDir(src.clone()));
    }
    for (pattern, mode) in &overlay.modes {
        if *mode > 0o7777 {
            return Err(ComposeError::BadMode {
                source_dir: src.clone(),
                pattern: pattern.clone(),
                mode: *mode,
            });
        }
    }
    let patterns: Vec<(Vec<u8>, u32)> = overlay
        .modes
        .iter()
        .map(|(p, m)| {
            let p = p.trim_start_matches("./").trim_start_matches('/');
            (p.trim_end_matches('/').as_bytes().to_vec(), *m)
        })
        .collect();
    let mut used = vec![false; patterns.len()];
    let mut glob_mode = |rel: &[u8]| -> Option<u32> {
        let mut found = None;
        for (i, (p, m)) in patterns.iter().enumerate() {
            if glob_match(p, rel) {
                used[i] = true;
                found = Some(*m);
            }
        }
        found
    };
    let tree_err = |path: &[u8], error: TreeError| ComposeError::Tree {
        source_dir: src.clone(),
        path: format!("/{}", String::from_utf8_lossy(path)),
        error,
    };

    let target = tree::normalize(overlay.target.as_bytes()).map_err(|e| tree_err(b"", e))?;
    let refused = |path: &[u8], problem: String| ComposeError::Refused {
        source_dir: src.clone(),
        path: format!("/{}", String::from_utf8_lossy(path)),
        problem,
    };
    // The target directory itself: created with the overlay's owner when missing. Its last
    // component is never followed: a symlink there (`/etc/os-release`) or a file would be
    // replaced by a directory, destroying what it is or points to.
    let target_real = tree
        .resolve(&target, false)
        .map_err(|e| tree_err(&target, e))?;
    match tree.get(&target_real).map(|i| &i.kind) {
        None => {
            let dir = Inode::new(Kind::Dir, 0o755, overlay.uid, overlay.gid, epoch);
            tree.insert(&target_real, dir)
                .map_err(|e| tree_err(&target, e))?;
        }
        Some(Kind::Dir) => {}
        Some(Kind::Symlink(t)) => {
            return Err(refused(
                &target,
                format!(
                    "(the overlay's target) is a symbolic link to {}; set `target` to the directory it points to",
                    String::from_utf8_lossy(t)
                ),
            ))
        }
        Some(_) => {
            return Err(refused(
                &target,
                "(the overlay's target) exists in the base and is not a directory; an overlay is copied into a directory".into(),
            ))
        }
    }

    let mut digest = Sha256::new();
    let mut files = 0u64;
    let mut bytes = 0u64;
    for e in walk(src)? {
        let ft = e.meta.file_type();
        let dest = tree::join(&target_real, &e.rel);
        let (type_name, kind, default_mode): (&[u8], Kind, u32) = if ft.is_dir() {
            (b"dir", Kind::Dir, 0o755)
        } else if ft.is_file() {
            let exec = e.meta.mode() & 0o100 != 0;
            let blob = Blob::HostFile {
                path: e.host.clone(),
                len: e.meta.len(),
            };
            (b"file", Kind::File(blob), if exec { 0o755 } else { 0o644 })
        } else if ft.is_symlink() {
            let t = fs::read_link(&e.host).map_err(io_err(&e.host))?;
            (
                b"symlink",
                Kind::Symlink(t.as_os_str().as_bytes().to_vec()),
                0o777,
            )
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else {
                "file of unknown type"
            };
            return Err(ComposeError::Unsupported { path: e.host, kind });
        };
        let explicit = glob_mode(&e.rel);
        // Symlink permissions mean nothing on Linux; keep them 0777 whatever a glob says.
        let mode = match kind {
            Kind::Symlink(_) => 0o777,
            _ => explicit.unwrap_or(default_mode),
        };

        update_field(&mut digest, &e.rel);
        update_field(&mut digest, type_name);
        update_field(&mut digest, &mode.to_le_bytes());
        match &kind {
            Kind::Symlink(t) => update_field(&mut digest, t),
            Kind::File(_) => {
                let h = hash_host_file(&e.host, e.meta.len())?;
                update_field(&mut digest, &h);
                files += 1;
                bytes += e.meta.len();
            }
            _ => {}
        }

        if matches!(kind, Kind::Dir) {
            // Follow a tree symlink at the last component too (an overlay `lib/` must not
            // replace merged /usr's `lib -> usr/lib` with a real directory).
            let real = tree
                .resolve(&dest, true)
                .map_err(|er| tree_err(&dest, er))?;
            if let Some(id) = tree.lookup(&real).filter(|&id| tree.inode(id).is_dir()) {
                if let Some(m) = explicit {
                    tree.inode_mut(id).mode = m;
                }
                continue;
            }
            if real != dest && tree.get(&real).is_some() {
                return Err(refused(
                    &dest,
                    format!(
                        "is a symbolic link to /{}, which is not a directory; the overlay's directory would replace it",
                        String::from_utf8_lossy(&real)
                    ),
                ));
            }
            let inode = Inode::new(Kind::Dir, mode, overlay.uid, overlay.gid, epoch);
            tree.insert(&real, inode)
                .map_err(|er| tree_err(&dest, er))?;
        } else {
            let inode = Inode::new(kind, mode, overlay.uid, overlay.gid, epoch);
            tree.insert_resolved(&dest, inode)
                .map_err(|er| tree_err(&dest, er))?;
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(ComposeError::GlobUnmatched {
            source_dir: src.clone(),
            pattern: overlay.modes[i].0.clone(),
        });
    }
    Ok(OverlayStats {
        files,
        bytes,
        sha256: hex::encode(digest.finalize()),
    })
}

pub fn valid_os_release_value(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Double-quoted os-release value (shell syntax, as os-release(5) requires for non-trivial
/// values).
fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        if c != '\n' {
            s.push(c);
        }
    }
    s.push('"');
    s
}

/// Per-node state that an image must never carry (see the design: every node creates its own).
const NEVER_BAKED: &[&str] = &[
    "etc/rancher/node/password",
    "var/lib/rancher/rke2/server/token",
    "var/lib/rancher/rke2/server/node-token",
    "var/lib/rancher/rke2/server/tls",
];

/// Generated files: `/etc/os-release` gains `IMAGE_ID` and `IMAGE_VERSION` (through Debian's
/// `etc/os-release -> ../usr/lib/os-release` link, keeping the base's other fields), image-info
/// JSON at [`paths::IMAGE_INFO`], an empty `/etc/machine-id` (the first boot is a first boot),
/// an `/etc/fstab` with only a comment (rke2-init mounts everything), and the removal of
/// per-node secrets (`/etc/ssh/ssh_host_*`, the RKE2 node password, server token and TLS).
/// Returns one human-readable note per thing removed or reset, for the pipeline to print.
pub fn add_generated(
    tree: &mut Tree,
    id: &Identity,
    epoch: u64,
) -> Result<Vec<String>, ComposeError> {
    if !valid_os_release_value(&id.name) {
        return Err(ComposeError::BadIdentity {
            field: "name",
            value: id.name.clone(),
        });
    }
    if !valid_os_release_value(&id.version) {
        return Err(ComposeError::BadIdentity {
            field: "version",
            value: id.version.clone(),
        });
    }
    let gen_err = |path: &str, error: ReadError| ComposeError::Generated {
        path: format!("/{path}"),
        error,
    };
    let file =
        |data: Vec<u8>, mode: u32| Inode::new(Kind::File(Blob::bytes(data)), mode, 0, 0, epoch);
    let mut notes = Vec::new();

    // os-release: edit the real file the link points at, keeping its metadata and fields.
    let real = tree
        .resolve(b"etc/os-release", true)
        .map_err(|e| gen_err("etc/os-release", e.into()))?;
    let existing = tree.get(&real).cloned();
    let (old_text, template) = match existing {
        Some(
            inode @ Inode {
                kind: Kind::File(_),
                ..
            },
        ) => {
            let bytes = tree
                .read_file(&real)
                .map_err(|e| gen_err("etc/os-release", e))?;
            (String::from_utf8_lossy(&bytes).into_owned(), Some(inode))
        }
        _ => {
            notes.push(
                "the base has no /etc/os-release; created /usr/lib/os-release with the image identity only"
                    .to_string(),
            );
            (String::new(), None)
        }
    };
    let replaced: &[&str] = if id.pretty_name.is_some() {
        &["IMAGE_ID", "IMAGE_VERSION", "PRETTY_NAME"]
    } else {
        &["IMAGE_ID", "IMAGE_VERSION"]
    };
    let mut text = String::new();
    for line in old_text.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        if !replaced.contains(&key) {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some(p) = &id.pretty_name {
        text.push_str(&format!("PRETTY_NAME={}\n", quote(p)));
    }
    text.push_str(&format!("IMAGE_ID={}\n", id.name));
    text.push_str(&format!("IMAGE_VERSION={}\n", id.version));
    match template {
        Some(mut inode) => {
            inode.kind = Kind::File(Blob::bytes(text.into_bytes()));
            inode.mtime = epoch;
            tree.insert(&real, inode)
                .map_err(|e| gen_err("etc/os-release", e.into()))?;
        }
        // A dangling etc/os-release link: create the file it names.
        None if tree.get(b"etc/os-release").is_some() => {
            tree.insert(&real, file(text.into_bytes(), 0o644))
                .map_err(|e| gen_err("etc/os-release", e.into()))?;
        }
        None => {
            tree.insert_resolved(b"usr/lib/os-release", file(text.into_bytes(), 0o644))
                .map_err(|e| gen_err("usr/lib/os-release", e.into()))?;
            let link = Inode::new(
                Kind::Symlink(b"../usr/lib/os-release".to_vec()),
                0o777,
                0,
                0,
                epoch,
            );
            tree.insert_resolved(b"etc/os-release", link)
                .map_err(|e| gen_err("etc/os-release", e.into()))?;
        }
    }

    // image-info for the node programs.
    let mut info = serde_json::Map::new();
    info.insert("name".into(), id.name.clone().into());
    info.insert("version".into(), id.version.clone().into());
    if let Some(p) = &id.pretty_name {
        info.insert("prettyName".into(), p.clone().into());
    }
    info.insert("epoch".into(), epoch.into());
    let mut json = serde_json::to_vec_pretty(&serde_json::Value::Object(info))
        .map_err(|e| gen_err(paths::IMAGE_INFO, ReadError::Io(io::Error::other(e))))?;
    json.push(b'\n');
    tree.insert_resolved(paths::IMAGE_INFO.as_bytes(), file(json, 0o644))
        .map_err(|e| gen_err(paths::IMAGE_INFO, e.into()))?;

    // machine-id: empty, so systemd generates one on the node and treats the boot as first.
    let mid = b"etc/machine-id";
    if let Some(Inode {
        kind: Kind::File(b),
        ..
    }) = tree.get(mid)
    {
        if !b.is_empty() {
            notes.push(
                "emptied /etc/machine-id (the base had one; every node generates its own)".into(),
            );
        }
    }
    tree.insert_resolved(mid, file(Vec::new(), 0o444))
        .map_err(|e| gen_err("etc/machine-id", e.into()))?;
    // dbus keeps its own copy when a package install generated one; a link to
    // /etc/machine-id is fine, a file is a baked per-node id.
    let dbus_mid = b"var/lib/dbus/machine-id";
    if let Ok(real) = tree.resolve(dbus_mid, false) {
        if matches!(tree.get(&real).map(|i| &i.kind), Some(Kind::File(_))) {
            tree.remove(&real);
            notes.push("removed /var/lib/dbus/machine-id (a per-node id baked by the base; dbus falls back to /etc/machine-id)".into());
        }
    }

    let fstab = "# rke2-image: intentionally empty. rke2-init mounts the verified root, the state\n\
                 # partition and the writable overlays before systemd starts; see the image manifest.\n";
    tree.insert_resolved(b"etc/fstab", file(fstab.as_bytes().to_vec(), 0o644))
        .map_err(|e| gen_err("etc/fstab", e.into()))?;

    // Per-node secrets and identities.
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    if let Ok(ssh) = tree.resolve(b"etc/ssh", true) {
        let mut prefix = ssh.clone();
        prefix.extend_from_slice(b"/ssh_host_");
        doomed.extend(
            tree.iter()
                .map(|(p, _)| p)
                .filter(|p| p.starts_with(&prefix) && !p[prefix.len()..].contains(&b'/'))
                .map(<[u8]>::to_vec),
        );
    }
    for p in NEVER_BAKED {
        if let Ok(real) = tree.resolve(p.as_bytes(), false) {
            if tree.lookup(&real).is_some() {
                doomed.push(real);
            }
        }
    }
    doomed.sort();
    doomed.dedup();
    for p in doomed {
        tree.remove(&p);
        notes.push(format!(
            "removed /{} (per-node state; never baked into an image)",
            String::from_utf8_lossy(&p)
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"usr/bin/*", b"usr/bin/x"));
        assert!(!glob_match(b"usr/bin/*", b"usr/bin/x/y"));
        assert!(!glob_match(b"usr/*", b"usr"));
        assert!(glob_match(b"**/*.sh", b"a.sh"));
        assert!(glob_match(b"**/*.sh", b"a/b/c.sh"));
        assert!(!glob_match(b"**/*.sh", b"a/b/c.shx"));
        assert!(glob_match(b"etc/**", b"etc/a/b"));
        assert!(glob_match(b"etc/?", b"etc/a"));
        assert!(!glob_match(b"etc/?", b"etc/ab"));
        assert!(glob_match(b"*", b"x"));
        assert!(!glob_match(b"*", b"x/y"));
        assert!(glob_match(b"a*b?c*", b"aXXbYcZZ"));
        assert!(!glob_match(b"a*b?c", b"abc"));
        assert!(glob_match(b"**/x/**/y", b"a/x/b/c/y"));
        assert!(!glob_match(b"**/x/**/y", b"a/x/b/c/z"));
        // Would take minutes with a backtracking matcher.
        let start = std::time::Instant::now();
        let path = format!("opt/{}", "a".repeat(60));
        assert!(!glob_match(
            b"opt/*a*a*a*a*a*a*a*a*a*a*a*a*b",
            path.as_bytes()
        ));
        let deep = vec!["a"; 40].join("/");
        assert!(!glob_match(b"**/**/**/**/**/**/**/**/b", deep.as_bytes()));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"My "x" $y\"#), r#""My \"x\" \$y\\""#);
    }
}
