//! Test support: seed a root, dump a tree, compare it with an expected tree on disk.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rke2_firstboot::agent::{self, Loaded};
use rke2_firstboot::identity::Identity;
use rke2_firstboot::sources::Found;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Vec<u8> {
    fs::read(manifest_dir().join("tests/fixtures").join(name)).unwrap()
}

pub fn example(name: &str) -> Vec<u8> {
    fs::read(manifest_dir().join("../images/node-config").join(name)).unwrap()
}

/// A minimal Debian-like /etc: root and a sudo group, as in the base image.
pub fn seed(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("root")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
    fs::write(root.join("etc/shadow"), "root:*:19700:0:99999:7:::\n").unwrap();
    fs::write(root.join("etc/gshadow"), "root:*::\nsudo:*::\n").unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
}

pub fn load(origin: &str, bytes: Vec<u8>, id: &Identity) -> Loaded {
    agent::load(
        &Found {
            origin: origin.into(),
            bytes,
            meta_hostname: None,
        },
        id,
    )
    .unwrap()
}

/// One line per entry, sorted: `kind mode uid:gid path [-> target]`.
pub fn dump(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let head = format!("{:04o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
        if md.file_type().is_symlink() {
            out.push(format!(
                "{rel} l {head} -> {}",
                fs::read_link(&p).unwrap().display()
            ));
        } else if md.is_dir() {
            out.push(format!("{rel} d {head}"));
            walk(root, &p, out);
        } else {
            out.push(format!("{rel} f {head}"));
        }
    }
}

/// Every entry with its contents: compares two trees byte for byte.
pub fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    dump(root)
        .into_iter()
        .map(|l| {
            let rel = l.split(' ').next().unwrap().to_string();
            let body = if l.contains(" f ") {
                fs::read(root.join(&rel)).unwrap()
            } else {
                Vec::new()
            };
            (l, body)
        })
        .collect()
}

/// Compares `root` with `tests/expected/<case>.tree` (entry list) and the files under
/// `tests/expected/<case>/` (contents). `BLESS=1` rewrites the expectation instead.
pub fn check_tree(root: &Path, case: &str) {
    check_tree_except(root, case, &[]);
}

/// Like [`check_tree`], but the contents of `skip` (entries still must exist) are not compared.
pub fn check_tree_except(root: &Path, case: &str, skip: &[&str]) {
    let exp_dir = manifest_dir().join("tests/expected");
    let list = exp_dir.join(format!("{case}.tree"));
    let files = exp_dir.join(case);
    let got = dump(root);
    if std::env::var_os("BLESS").is_some() {
        fs::create_dir_all(&exp_dir).unwrap();
        fs::write(&list, got.join("\n") + "\n").unwrap();
        let _ = fs::remove_dir_all(&files);
        for l in &got {
            let mut it = l.split(' ');
            let (rel, kind) = (it.next().unwrap(), it.next().unwrap());
            if kind == "f" {
                let dst = files.join(rel);
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                fs::copy(root.join(rel), dst).unwrap();
            }
        }
        return;
    }
    let want: Vec<String> = fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create)", list.display()))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, want, "tree of {case} differs from {}", list.display());
    for l in &got {
        let mut it = l.split(' ');
        let (rel, kind) = (it.next().unwrap(), it.next().unwrap());
        if kind == "f" && !skip.contains(&rel) {
            let a = fs::read(root.join(rel)).unwrap();
            let b = fs::read(files.join(rel)).unwrap();
            assert!(
                a == b,
                "{case}: {rel} differs:\n--- got\n{}\n--- want\n{}",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b)
            );
        }
    }
}

/// Runs an external checker; returns None when it is not installed.
pub fn tool(cmd: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(cmd).args(args).output().ok()
}

/// A configuration source that always finds these bytes.
#[allow(dead_code)] // not every test file uses every helper
pub struct Fixed(pub Vec<u8>);

impl rke2_firstboot::sources::Source for Fixed {
    fn name(&self) -> &'static str {
        "test source"
    }
    fn fetch(
        &self,
    ) -> Result<Option<rke2_firstboot::sources::Found>, rke2_firstboot::sources::SourceError> {
        Ok(Some(rke2_firstboot::sources::Found {
            origin: "test".into(),
            bytes: self.0.clone(),
            meta_hostname: None,
        }))
    }
}
