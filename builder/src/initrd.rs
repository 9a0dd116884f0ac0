//! The initrd: `rke2-init` plus exactly the kernel modules it needs to reach the verified root,
//! as a zstd-compressed cpio newc archive.
//!
//! The module closure follows what `modprobe` does with the base's `modules.dep`,
//! `modules.softdep`, `modules.alias` and `modules.builtin`: a name is a module file, else an
//! alias (every module the alias matches), else built in (nothing to load). Each module is
//! preceded by its `pre:` soft dependencies and its dependencies (the `modules.dep` list is
//! loaded last entry first, as kmod does), and followed by its `post:` soft dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use crate::cpio::{self, CpioError};
use crate::tree::{self, Blob, Inode, InodeId, Kind, ReadError, Tree, TreeError};

/// Modules the boot needs before the root is mounted: disk controllers (virtio, SCSI, NVMe,
/// AHCI, CD-ROM), the root stack (dm-verity, EROFS and its crc32c provider, overlayfs), the
/// state filesystem (ext4), config sources (ESP/`cidata` on vfat, ISO 9660, QEMU fw_cfg) and
/// loop devices. All of them are modules in Debian's 6.1 kernel.
pub const BOOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "nvme",
    "ahci",
    "dm_verity",
    "erofs",
    "crc32c_generic",
    "overlay",
    "ext4",
    "vfat",
    // FAT's default codepage (437) and iocharset (ascii) in Debian's kernel config.
    "nls_cp437",
    "nls_ascii",
    "isofs",
    "qemu_fw_cfg",
    "loop",
];

/// Load-order file inside the initrd: one absolute module path per line, dependency-first.
pub const LOAD_ORDER_FILE: &str = "etc/rke2-init/modules";

/// Module directories a Debian root may carry (merged /usr first).
const MODULE_ROOTS: &[&str] = &["usr/lib/modules", "lib/modules"];

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error(
        "kernel {kver}: no modules.dep under /usr/lib/modules/{kver} or /lib/modules/{kver} \
         in the base tree (is the matching linux-image package installed, and depmod run?)"
    )]
    NoModules { kver: String },
    #[error(
        "kernel module {name:?} is not a module, an alias or built into kernel {kver}; \
         check the name against modules.dep/modules.alias/modules.builtin"
    )]
    UnknownModule { name: String, kver: String },
    #[error("{file}: line {line}: {msg}")]
    Parse {
        file: String,
        line: usize,
        msg: String,
    },
    #[error(
        "kernel {kver}: modules.dep names {name:?} as a dependency but has no line for it; \
         the module index is stale (run depmod in the base)"
    )]
    DependencyWithoutEntry { name: String, kver: String },
    #[error("reading {path} from the base tree: {source}")]
    Read { path: String, source: ReadError },
    #[error(
        "module file /{0} listed in modules.dep is missing or not a regular file in the base tree"
    )]
    MissingModuleFile(String),
    #[error("initrd file {path:?}: {source}")]
    Tree { path: String, source: TreeError },
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error("reading initrd file contents: {0}")]
    Io(#[from] io::Error),
    #[error("zstd-compressing the initrd: {0}")]
    Compress(io::Error),
}

/// A module to load: its name (with `_`) and its path in the base tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Tree path, e.g. `usr/lib/modules/6.1.0-x/kernel/fs/erofs/erofs.ko`.
    pub path: String,
}

/// kmod treats `-` and `_` in module names as the same character.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a `modules.dep` path: file name without `.ko` (and any compression suffix).
fn name_of(rel: &str) -> String {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    let stem = match base.find(".ko") {
        Some(i) => &base[..i],
        None => base,
    };
    norm(stem)
}

/// `fnmatch(3)` without flags: `*`, `?` and `[...]` classes (ranges, `!`/`^` negation), as
/// kmod matches `modules.alias` patterns.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match pat.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&pat[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&pat[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let mut i = 1;
            let negate = matches!(pat.get(1), Some(b'!' | b'^'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < pat.len() && (first || pat[i] != b']') {
                first = false;
                if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
                    matched |= pat[i] <= c && c <= pat[i + 2];
                    i += 3;
                } else {
                    matched |= pat[i] == c;
                    i += 1;
                }
            }
            if i >= pat.len() {
                // No closing bracket: a literal '['.
                return c == b'[' && glob(&pat[1..], &s[1..]);
            }
            matched != negate && glob(&pat[i + 1..], &s[1..])
        }
        Some(&p) => s.first() == Some(&p) && glob(&pat[1..], &s[1..]),
    }
}

enum Lookup {
    Modules(Vec<String>),
    Builtin,
    Unknown,
}

/// The module database of one kernel, read from the base tree.
struct ModDb {
    kver: String,
    /// Resolved tree path of `.../modules/<kver>`.
    dir: String,
    /// name -> (path relative to `dir`, dependency names in `modules.dep` order).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// (normalised pattern, module name), in file order.
    aliases: Vec<(String, String)>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeSet<String>,
    /// name -> (pre, post) soft dependencies (names or aliases).
    softdeps: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// Raw `modules.dep` and `modules.softdep` lines keyed by module name, for the initrd copies.
    dep_lines: BTreeMap<String, String>,
    softdep_lines: Vec<(String, String)>,
}

/// Index files of a modules directory, read in one pass over their sources (each read of an
/// archive-backed file would otherwise decompress the base archive again). Missing files are
/// `None`.
fn read_texts<const N: usize>(
    tree: &Tree,
    paths: [&str; N],
) -> Result<[Option<String>; N], InitrdError> {
    let mut blobs: Vec<(usize, &Blob)> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let real = tree
            .resolve(path.as_bytes(), true)
            .map_err(|e| InitrdError::Read {
                path: format!("/{path}"),
                source: e.into(),
            })?;
        match tree.get(&real).map(|i| &i.kind) {
            None => {}
            Some(Kind::File(b)) => {
                crate::limits::check(&real, b.len()).map_err(|e| InitrdError::Read {
                    path: format!("/{path}"),
                    source: e.into(),
                })?;
                blobs.push((i, b))
            }
            Some(_) => {
                return Err(InitrdError::Read {
                    path: format!("/{path}"),
                    source: TreeError::NotAFile(format!("/{path}")).into(),
                })
            }
        }
    }
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    Tree::read_blobs(&blobs, &mut |i, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        out[i] = Some(String::from_utf8_lossy(&v).into_owned());
        Ok(())
    })
    .map_err(|e| InitrdError::Read {
        path: format!("/{}", paths.join(", /")),
        source: e.into(),
    })?;
    Ok(out)
}

/// The resolved tree directory holding `modules.dep` for `kver`, if any.
fn modules_dir(tree: &Tree, kver: &str) -> Option<String> {
    MODULE_ROOTS.iter().find_map(|root| {
        let dir = tree
            .resolve(format!("{root}/{kver}").as_bytes(), true)
            .ok()?;
        let dep = tree::join(&dir, b"modules.dep");
        let real = tree.resolve(&dep, true).ok()?;
        match tree.get(&real).map(|i| &i.kind) {
            Some(Kind::File(_)) => Some(String::from_utf8_lossy(&dir).into_owned()),
            _ => None,
        }
    })
}

impl ModDb {
    fn load(tree: &Tree, kver: &str) -> Result<ModDb, InitrdError> {
        let dir = modules_dir(tree, kver).ok_or_else(|| InitrdError::NoModules {
            kver: kver.to_string(),
        })?;
        let file = |f: &str| format!("{dir}/{f}");
        let mut db = ModDb {
            kver: kver.to_string(),
            dir: dir.clone(),
            deps: BTreeMap::new(),
            aliases: Vec::new(),
            builtin: BTreeSet::new(),
            builtin_aliases: BTreeSet::new(),
            softdeps: BTreeMap::new(),
            dep_lines: BTreeMap::new(),
            softdep_lines: Vec::new(),
        };

        let dep_path = file("modules.dep");
        let [dep, alias, builtin, builtin_modinfo, softdep] = read_texts(
            tree,
            [
                &dep_path,
                &file("modules.alias"),
                &file("modules.builtin"),
                &file("modules.builtin.modinfo"),
                &file("modules.softdep"),
            ],
        )?;
        let text = dep.unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((m, rest)) = line.split_once(':') else {
                return Err(InitrdError::Parse {
                    file: format!("/{dep_path}"),
                    line: i + 1,
                    msg: format!("expected \"module.ko: deps...\", got {line:?}"),
                });
            };
            let name = name_of(m.trim());
            let deps = rest.split_whitespace().map(name_of).collect();
            db.deps.insert(name.clone(), (m.trim().to_string(), deps));
            db.dep_lines.insert(name, line.to_string());
        }

        if let Some(text) = alias {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if let (Some("alias"), Some(pat), Some(m)) = (w.next(), w.next(), w.next()) {
                    db.aliases.push((norm(pat), norm(m)));
                }
            }
        }
        if let Some(text) = builtin {
            db.builtin.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| name_of(l.trim())),
            );
        }
        // NUL-separated "module.key=value" records; the aliases of built-in modules.
        if let Some(text) = builtin_modinfo {
            for rec in text.split('\0') {
                if let Some((m, rest)) = rec.split_once('.') {
                    if let Some(alias) = rest.strip_prefix("alias=") {
                        db.builtin.insert(norm(m));
                        db.builtin_aliases.insert(norm(alias));
                    }
                }
            }
        }
        if let Some(text) = softdep {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("softdep") {
                    continue;
                }
                let Some(m) = w.next() else { continue };
                let m = norm(m);
                // Words before the first "pre:"/"post:" are ignored, as kmod does.
                let mut mode = 0;
                let entry = db.softdeps.entry(m.clone()).or_default();
                for word in w {
                    match word {
                        "pre:" => mode = 1,
                        "post:" => mode = 2,
                        _ if mode == 1 => entry.0.push(word.to_string()),
                        _ if mode == 2 => entry.1.push(word.to_string()),
                        _ => {}
                    }
                }
                db.softdep_lines.push((m, line.to_string()));
            }
        }
        Ok(db)
    }

    fn lookup(&self, name: &str) -> Lookup {
        let n = norm(name);
        if self.deps.contains_key(&n) {
            return Lookup::Modules(vec![n]);
        }
        let mut found: Vec<String> = Vec::new();
        for (pat, m) in &self.aliases {
            if glob(pat.as_bytes(), n.as_bytes()) && self.deps.contains_key(m) && !found.contains(m)
            {
                found.push(m.clone());
            }
        }
        if !found.is_empty() {
            return Lookup::Modules(found);
        }
        if self.builtin.contains(&n) || self.builtin_aliases.contains(&n) {
            return Lookup::Builtin;
        }
        Lookup::Unknown
    }

    /// Appends `name` after everything it needs. `seen` is marked on entry so soft-dependency
    /// cycles terminate.
    fn add(&self, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let (pre, post) = self.softdeps.get(name).cloned().unwrap_or_default();
        // Soft dependencies that do not exist are skipped, as modprobe does.
        for s in &pre {
            if let Lookup::Modules(ms) = self.lookup(s) {
                for m in ms {
                    self.add(&m, seen, out);
                }
            }
        }
        if let Some((_, deps)) = self.deps.get(name) {
            for d in deps.iter().rev() {
                self.add(d, seen, out);
            }
        }
        out.push(name.to_string());
        for s in &post {
            if let Lookup::Modules(ms) = self.lookup(s) {
                for m in ms {
                    self.add(&m, seen, out);
                }
            }
        }
    }

    fn closure(&self, wanted: &[&str]) -> Result<Vec<Module>, InitrdError> {
        let mut seen = BTreeSet::new();
        let mut order = Vec::new();
        for w in wanted {
            match self.lookup(w) {
                Lookup::Modules(ms) => {
                    for m in ms {
                        self.add(&m, &mut seen, &mut order);
                    }
                }
                Lookup::Builtin => {}
                Lookup::Unknown => {
                    return Err(InitrdError::UnknownModule {
                        name: w.to_string(),
                        kver: self.kver.clone(),
                    })
                }
            }
        }
        order
            .into_iter()
            .map(|name| match self.deps.get(&name) {
                Some((rel, _)) => Ok(Module {
                    path: format!("{}/{rel}", self.dir),
                    name,
                }),
                // Named as a dependency in modules.dep without a line of its own.
                None => Err(InitrdError::DependencyWithoutEntry {
                    name,
                    kver: self.kver.clone(),
                }),
            })
            .collect()
    }
}

/// Kernel versions present in the tree (dirs under usr/lib/modules or lib/modules with
/// modules.dep), sorted.
pub fn kernel_versions(tree: &Tree) -> Vec<String> {
    let children = tree.children();
    let mut out = BTreeSet::new();
    for root in MODULE_ROOTS {
        let Ok(dir) = tree.resolve(root.as_bytes(), true) else {
            continue;
        };
        for (name, _) in children.get(dir.as_slice()).into_iter().flatten() {
            let kver = String::from_utf8_lossy(name).into_owned();
            if modules_dir(tree, &kver).is_some() {
                out.insert(kver);
            }
        }
    }
    out.into_iter().collect()
}

/// Modules to load, dependency-first, honouring modules.softdep `pre:` (and `post:`) entries and
/// modules.alias where a name is an alias; names may use - or _. Built-in modules
/// (modules.builtin) are satisfied without a file. Unknown name -> error naming it and the kernel.
pub fn module_closure(
    tree: &Tree,
    kver: &str,
    wanted: &[&str],
) -> Result<Vec<Module>, InitrdError> {
    ModDb::load(tree, kver)?.closure(wanted)
}

#[derive(Debug)]
pub struct Spec<'a> {
    /// The init executable (`rke2-init`), stored as `/init`.
    pub init: &'a Blob,
    pub kver: &'a str,
    pub modules: &'a [&'a str],
    /// Further files: (path inside the initrd, content, permission bits). They are added last
    /// and replace anything at the same path.
    pub extra_files: &'a [(String, Blob, u32)],
    /// Timestamp of every entry.
    pub mtime: u64,
}

#[derive(Debug)]
pub struct Initrd {
    /// zstd-compressed cpio newc.
    pub bytes: Vec<u8>,
    pub modules: Vec<Module>,
    pub uncompressed_size: u64,
}

/// zstd level. Measured on the Debian 6.1 boot modules: level 9 is within ~12% of level 19's
/// size at a twentieth of its time; decompression speed at boot is about the same.
const ZSTD_LEVEL: i32 = 9;

/// cpio newc, zstd-compressed, containing /init (0755), dev/, proc/, sys/, run/, sysroot/,
/// dev/console (char 5:1), lib/modules/<kver>/ with exactly the closure's .ko files at their
/// relative paths plus a modules.dep (and modules.softdep) restricted to them, and a load-order
/// file `etc/rke2-init/modules` (one module path per line, dependency-first).
pub fn build(tree: &Tree, spec: &Spec) -> Result<Initrd, InitrdError> {
    let db = ModDb::load(tree, spec.kver)?;
    let modules = db.closure(spec.modules)?;
    let mtime = spec.mtime;
    let mut t = Tree::new(mtime);
    let put = |t: &mut Tree, path: &str, kind: Kind, mode: u32| {
        t.insert(path.as_bytes(), Inode::new(kind, mode, 0, 0, mtime))
            .map(|_| ())
            .map_err(|source| InitrdError::Tree {
                path: path.to_string(),
                source,
            })
    };
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("sysroot", 0o755),
        ("etc", 0o755),
        ("etc/rke2-init", 0o755),
    ] {
        put(&mut t, d, Kind::Dir, mode)?;
    }
    put(
        &mut t,
        rke2_image_contract::paths::INITRD_INIT,
        Kind::File(spec.init.clone()),
        0o755,
    )?;
    put(
        &mut t,
        "dev/console",
        Kind::CharDev { major: 5, minor: 1 },
        0o600,
    )?;

    let mod_dir = format!(
        "{}/{}",
        rke2_image_contract::paths::INITRD_MODULES,
        spec.kver
    );
    let included: BTreeSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let mut load_order = String::new();
    let mut dep_file = String::new();
    for m in &modules {
        let rel = m
            .path
            .strip_prefix(&db.dir)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(&m.path);
        let real = tree
            .resolve(m.path.as_bytes(), true)
            .map_err(|_| InitrdError::MissingModuleFile(m.path.clone()))?;
        let Some(Kind::File(blob)) = tree.get(&real).map(|i| &i.kind) else {
            return Err(InitrdError::MissingModuleFile(m.path.clone()));
        };
        put(
            &mut t,
            &format!("{mod_dir}/{rel}"),
            Kind::File(blob.clone()),
            0o644,
        )?;
        load_order.push_str(&format!("/{mod_dir}/{rel}\n"));
    }
    // modules.dep restricted to the closure (whose dependencies are all in it by construction),
    // sorted by module path.
    let mut dep_lines: Vec<(&String, &String)> = db
        .dep_lines
        .iter()
        .filter(|(n, _)| included.contains(n.as_str()))
        .collect();
    dep_lines.sort_by_key(|(_, l)| l.as_str());
    for (_, l) in dep_lines {
        dep_file.push_str(l);
        dep_file.push('\n');
    }
    let softdep_file: String = db
        .softdep_lines
        .iter()
        .filter(|(n, _)| included.contains(n.as_str()))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    put(
        &mut t,
        &format!("{mod_dir}/modules.dep"),
        Kind::File(Blob::bytes(dep_file)),
        0o644,
    )?;
    put(
        &mut t,
        &format!("{mod_dir}/modules.softdep"),
        Kind::File(Blob::bytes(softdep_file)),
        0o644,
    )?;
    put(
        &mut t,
        LOAD_ORDER_FILE,
        Kind::File(Blob::bytes(load_order)),
        0o644,
    )?;
    for (path, blob, mode) in spec.extra_files {
        let p = crate::tree::normalize(path.as_bytes()).map_err(|source| InitrdError::Tree {
            path: path.clone(),
            source,
        })?;
        put(
            &mut t,
            &String::from_utf8_lossy(&p),
            Kind::File(blob.clone()),
            *mode,
        )?;
    }

    let cpio = write_cpio(&t, mtime)?;
    let uncompressed_size = cpio.len() as u64;
    let bytes = zstd::stream::encode_all(&cpio[..], ZSTD_LEVEL).map_err(InitrdError::Compress)?;
    Ok(Initrd {
        bytes,
        modules,
        uncompressed_size,
    })
}

/// Writes every entry of `t` (sorted, so parents come first) as cpio newc.
fn write_cpio(t: &Tree, mtime: u64) -> Result<Vec<u8>, InitrdError> {
    let entries: Vec<(String, InodeId)> = t
        .iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, id)| (String::from_utf8_lossy(p).into_owned(), id))
        .collect();
    // File contents are small (an init binary and some modules): read them all up front, in
    // the order the sources prefer, then write the archive sequentially.
    let wanted: Vec<(usize, &Blob)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, (_, id))| match &t.inode(*id).kind {
            Kind::File(b) => Some((i, b)),
            _ => None,
        })
        .collect();
    for (i, b) in &wanted {
        let path = entries[*i].0.as_bytes();
        crate::limits::check_with(
            path,
            b.len(),
            (crate::limits::INITRD_FILE, "a file in the initrd"),
        )
        .map_err(|e| InitrdError::Read {
            path: format!("/{}", entries[*i].0),
            source: e.into(),
        })?;
    }
    let mut contents: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    Tree::read_blobs(&wanted, &mut |i, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        contents.insert(i, v);
        Ok(())
    })?;
    let mut w = cpio::Writer::new(Vec::new(), mtime)?;
    for (i, (path, id)) in entries.iter().enumerate() {
        let inode = t.inode(*id);
        match &inode.kind {
            Kind::Dir => w.dir(path, inode.mode)?,
            Kind::File(_) => {
                let data = contents.get(&i).map(Vec::as_slice).unwrap_or_default();
                w.file(path, inode.mode, data)?
            }
            Kind::Symlink(target) => w.symlink(path, target)?,
            Kind::CharDev { major, minor } => w.char_dev(path, inode.mode, *major, *minor)?,
            // The initrd builder never creates other kinds.
            _ => {}
        }
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob(b"crc32c", b"crc32c"));
        assert!(!glob(b"crc32c", b"crc32"));
        assert!(glob(b"pci:v*d*", b"pci:v1AF4d1001"));
        assert!(glob(b"usb:v13FDp3940d0[0-2]*", b"usb:v13FDp3940d01x"));
        assert!(!glob(b"usb:v13FDp3940d0[0-2]*", b"usb:v13FDp3940d05"));
        assert!(glob(b"a[!x]c", b"abc"));
        assert!(!glob(b"a[!x]c", b"axc"));
        assert!(glob(b"a?c", b"abc"));
    }

    fn file(t: &mut Tree, path: &str, data: &str) {
        t.insert(
            path.as_bytes(),
            Inode::new(
                Kind::File(Blob::bytes(data.as_bytes().to_vec())),
                0o644,
                0,
                0,
                0,
            ),
        )
        .unwrap();
    }

    /// A synthetic kernel: hard deps, a softdep through an alias, a builtin, a cycle.
    fn fake_tree() -> Tree {
        let mut t = Tree::new(0);
        t.insert(
            b"lib",
            Inode::new(Kind::Symlink(b"usr/lib".to_vec()), 0o777, 0, 0, 0),
        )
        .unwrap();
        let d = "usr/lib/modules/9.9.9";
        file(
            &mut t,
            &format!("{d}/modules.dep"),
            "kernel/a.ko: kernel/c.ko kernel/b-x.ko\n\
             kernel/b-x.ko: kernel/c.ko\n\
             kernel/c.ko:\n\
             kernel/gen.ko:\n\
             kernel/p.ko:\n\
             kernel/q.ko: kernel/p.ko\n\
             kernel/stale.ko: kernel/gone.ko\n",
        );
        file(
            &mut t,
            &format!("{d}/modules.alias"),
            "alias crypto-thing gen\nalias pci:v1234* a\n",
        );
        file(
            &mut t,
            &format!("{d}/modules.softdep"),
            "softdep c pre: crypto-thing\nsoftdep p post: q\nsoftdep a ignored pre: nothere\n",
        );
        file(&mut t, &format!("{d}/modules.builtin"), "kernel/unix.ko\n");
        for m in ["a", "b-x", "c", "gen", "p", "q"] {
            file(&mut t, &format!("{d}/kernel/{m}.ko"), m);
        }
        t
    }

    fn names(ms: &[Module]) -> Vec<&str> {
        ms.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn closure_on_a_synthetic_kernel() {
        let t = fake_tree();
        assert_eq!(kernel_versions(&t), vec!["9.9.9".to_string()]);
        let c = module_closure(&t, "9.9.9", &["a"]).unwrap();
        // c's pre softdep (an alias of gen) first; a's deps loaded last-listed first.
        assert_eq!(names(&c), vec!["gen", "c", "b_x", "a"]);
        assert_eq!(c[2].path, "usr/lib/modules/9.9.9/kernel/b-x.ko");
        // Aliases with wildcards, '-' for '_', builtins, post softdeps.
        assert_eq!(
            names(&module_closure(&t, "9.9.9", &["pci:v1234d0001", "b-x"]).unwrap()),
            vec!["gen", "c", "b_x", "a"]
        );
        assert!(module_closure(&t, "9.9.9", &["unix"]).unwrap().is_empty());
        assert_eq!(
            names(&module_closure(&t, "9.9.9", &["p"]).unwrap()),
            vec!["p", "q"]
        );
        let e = module_closure(&t, "9.9.9", &["zzz"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("zzz") && e.contains("9.9.9"), "{e}");
        assert!(matches!(
            module_closure(&t, "9.9.9", &["stale"]),
            Err(InitrdError::DependencyWithoutEntry { .. })
        ));
        assert!(matches!(
            module_closure(&t, "1.0", &["a"]),
            Err(InitrdError::NoModules { .. })
        ));
    }
}
