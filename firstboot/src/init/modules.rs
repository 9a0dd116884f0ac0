//! Kernel module load order from `modules.dep`, `modules.softdep` and `modules.alias`
//! (the files `depmod` writes), the way `modprobe` orders them: soft "pre" dependencies,
//! then hard dependencies (listed by depmod so the last one loads first), then the module,
//! then soft "post" dependencies.

use std::collections::{BTreeMap, BTreeSet};

/// The parsed module database of one kernel (paths relative to `lib/modules/<kver>`).
#[derive(Debug, Default, Clone)]
pub struct ModuleDb {
    /// module path -> its dependencies (paths), in `modules.dep` order.
    deps: BTreeMap<String, Vec<String>>,
    /// normalised module name -> path.
    by_name: BTreeMap<String, String>,
    /// normalised module name -> (pre, post) soft dependencies (names or aliases).
    softdeps: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// alias -> normalised module names in `modules.alias` order (modprobe's preference
    /// order); exact aliases only, wildcard aliases are for devices.
    aliases: BTreeMap<String, Vec<String>>,
    /// Names of modules built into the kernel (`modules.builtin`): nothing to load.
    builtin: BTreeSet<String>,
}

/// Module name as the kernel sees it: file name without `.ko[.xz|.zst|.gz]`, `-` -> `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDb {
    /// Parses the three depmod files; `softdep` and `alias` may be empty.
    pub fn parse(dep: &str, softdep: &str, alias: &str) -> ModuleDb {
        let mut db = ModuleDb::default();
        for line in dep.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            let list = rest.split_whitespace().map(str::to_string).collect();
            db.by_name.insert(module_name(&module), module.clone());
            db.deps.insert(module, list);
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let entry = db.softdeps.entry(module.replace('-', "_")).or_default();
            // Words before any "pre:"/"post:" marker count as pre, like modprobe does.
            let mut post = false;
            for w in words {
                match w {
                    "pre:" => post = false,
                    "post:" => post = true,
                    name if post => entry.1.push(name.to_string()),
                    name => entry.0.push(name.to_string()),
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            if let (Some(a), Some(m)) = (words.next(), words.next()) {
                if !a.contains(['*', '?', '[']) {
                    let list = db.aliases.entry(a.to_string()).or_default();
                    let m = m.replace('-', "_");
                    if !list.contains(&m) {
                        list.push(m);
                    }
                }
            }
        }
        db
    }

    /// Adds `modules.builtin` (one path per line); wanted modules found there are skipped.
    pub fn with_builtin(mut self, text: &str) -> ModuleDb {
        self.builtin = text
            .lines()
            .map(module_name)
            .filter(|n| !n.is_empty())
            .collect();
        self
    }

    /// Names a soft dependency resolves to: the module itself, or every module providing
    /// that alias (as modprobe loads all providers of e.g. `crypto-crc32c`).
    fn resolve_soft(&self, name: &str) -> Vec<String> {
        let norm = name.replace('-', "_");
        if self.by_name.contains_key(&norm) {
            return vec![norm];
        }
        self.aliases.get(name).cloned().unwrap_or_default()
    }

    /// Load order for `wanted` (module names or paths). Hard dependencies and wanted modules
    /// must be in the database; soft dependencies that are missing are skipped (modprobe does
    /// the same), and callers treat their load failures as non-fatal.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<LoadItem>, String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            let name = module_name(w);
            if self.builtin.contains(&name) && !self.by_name.contains_key(&name) {
                continue;
            }
            if !self.by_name.contains_key(&name) {
                return Err(format!("module {w} is not listed in modules.dep"));
            }
            self.visit(&name, false, &mut seen, &mut out)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        soft: bool,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<LoadItem>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = self.by_name.get(name) else {
            return Err(format!("module {name} is not listed in modules.dep"));
        };
        let (pre, post) = self.softdeps.get(name).cloned().unwrap_or_default();
        for s in &pre {
            for n in self.resolve_soft(s) {
                self.visit(&n, true, seen, out)?;
            }
        }
        let deps = self.deps.get(path).cloned().unwrap_or_default();
        for d in deps.iter().rev() {
            self.visit(&module_name(d), soft, seen, out)?;
        }
        out.push(LoadItem {
            path: path.clone(),
            optional: soft,
        });
        for s in &post {
            for n in self.resolve_soft(s) {
                self.visit(&n, true, seen, out)?;
            }
        }
        Ok(())
    }
}

/// One module to load, relative to `lib/modules/<kver>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadItem {
    pub path: String,
    /// Pulled in only as a soft dependency: failing to load it (e.g. `crc32c-intel` on a CPU
    /// without SSE4.2) is not an error.
    pub optional: bool,
}

/// Parses `etc/rke2-init/modules`: one module (path or name) per line, `#` comments.
pub fn parse_wanted(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\n\
kernel/lib/libcrc32c.ko:\n\
kernel/crypto/crc32c_generic.ko:\n\
kernel/arch/x86/crypto/crc32c-intel.ko:\n\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko\n\
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n\
kernel/drivers/md/dm-mod.ko:\n\
kernel/lib/reed_solomon/reed_solomon.ko:\n";
    const SOFT: &str = "# comment\nsoftdep libcrc32c pre: crc32c\n";
    const ALIAS: &str =
        "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias pci:v* virtio_pci\n";

    fn paths(v: &[LoadItem]) -> Vec<&str> {
        v.iter()
            .map(|i| i.path.rsplit('/').next().unwrap_or(""))
            .collect()
    }

    #[test]
    fn orders_like_modprobe() {
        let db = ModuleDb::parse(DEP, SOFT, ALIAS);
        let order = db
            .load_order(&["erofs".into(), "kernel/drivers/md/dm-verity.ko".into()])
            .unwrap();
        assert_eq!(
            paths(&order),
            [
                "crc32c-intel.ko",
                "crc32c_generic.ko",
                "libcrc32c.ko",
                "erofs.ko",
                "reed_solomon.ko",
                "dm-mod.ko",
                "dm-bufio.ko",
                "dm-verity.ko"
            ]
        );
        assert!(order[0].optional && order[1].optional && !order[2].optional);
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let db = ModuleDb::parse(DEP, "", "").with_builtin("kernel/crypto/sha256_generic.ko\n");
        let order = db
            .load_order(&["sha256_generic".into(), "dm-mod".into()])
            .unwrap();
        assert_eq!(paths(&order), ["dm-mod.ko"]);
    }

    #[test]
    fn unknown_module_is_named() {
        let db = ModuleDb::parse(DEP, "", "");
        let e = db.load_order(&["nosuch".into()]).unwrap_err();
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn wanted_list_skips_comments() {
        assert_eq!(
            parse_wanted("# x\n erofs \n\nkernel/a.ko # y\n"),
            ["erofs", "kernel/a.ko"]
        );
    }
}
