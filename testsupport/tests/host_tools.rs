//! Tool coverage: every external program the host side runs (builder, tests, the QEMU harness,
//! testsupport, `scripts/`, `.ci/`) must be listed in `scripts/host-packages`, the table
//! `scripts/setup-host` installs from and checks. Programs are derived from the code, not
//! listed by hand, so a new `Command::new("x")` or a new command in a script fails here, naming
//! the program and the file, until its Debian package is in the table.
//!
//! Derived from Rust: `Command::new("x")`; `Command::new(CONST)` with `const CONST: &str =
//! "x"`; helpers whose `&str` parameter reaches `Command::new` (`tool("pwck", ..)`); the
//! program after `timeout`/`unshare`/`setpriv`/`nice`/`env` wrappers; literal `sh -c` scripts;
//! programs QEMU runs for us (`guestfwd=...-cmd:nc`). Node-side code (firstboot/src, the
//! stand-in binary) runs inside the image, so only its `#[cfg(test)]` part counts.
//! From shell: the command word of every simple command (also inside `$(..)`, `trap '..'`,
//! `sh -c '..'` and after `timeout`, `nice`, `env`, `exec`, `setpriv`, `unshare`, `chroot`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// First column of `scripts/host-packages` (Debian) and `scripts/host-python` (PyPI): programs
/// (and `/files`) setup-host provides.
fn table(ws: &Path) -> BTreeSet<String> {
    ["scripts/host-packages", "scripts/host-python"]
        .iter()
        .flat_map(|t| {
            let text = fs::read_to_string(ws.join(t)).expect(t);
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// program -> files that run it.
type Found = BTreeMap<String, BTreeSet<String>>;

fn add(found: &mut Found, prog: &str, file: &str) {
    let prog = prog.trim();
    let ok = prog.chars().any(|c| c.is_ascii_alphabetic())
        && !prog.contains('/')
        && !prog.starts_with(['-', '$', '{', '.'])
        && prog
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if ok && !SHELL_WORDS.contains(&prog) {
        found
            .entry(prog.to_string())
            .or_default()
            .insert(file.to_string());
    }
}

// ---------------------------------------------------------------------------------------
// Rust

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !matches!(name, "target" | "fuzz" | ".git") {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The part of a Rust file that runs on the build/test host.
fn host_part(rel: &str, text: &str) -> String {
    let node_side = rel.starts_with("firstboot/src/")
        || rel.starts_with("testsupport/src/bin/")
        || rel == "testsupport/src/standin.rs";
    let text = if node_side {
        text.find("#[cfg(test)]").map_or("", |i| &text[i..])
    } else {
        text
    };
    // Drop line comments (doc examples mention programs too).
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// String literals (`"..."`, unescaped, with `\`-newline continuations joined) in `s`.
fn literals(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            let mut lit = String::new();
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                    match b[i] {
                        b'n' => lit.push('\n'),
                        b'\n' => {
                            while i + 1 < b.len() && b[i + 1].is_ascii_whitespace() {
                                i += 1;
                            }
                        }
                        c => lit.push(c as char),
                    }
                } else {
                    lit.push(b[i] as char);
                }
                i += 1;
            }
            out.push(lit);
        }
        i += 1;
    }
    out
}

/// The balanced `(...)` or `{...}` starting at or after `from`: (start, end) byte offsets.
fn balanced(s: &str, from: usize, open: u8, close: u8) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let start = from + s[from..].find(open as char)?;
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' && b[i - 1] != b'\'' {
            in_str = true;
        } else if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some((start, i + 1));
            }
        }
        i += 1;
    }
    None
}

const WRAPPERS: &[&str] = &["timeout", "unshare", "setpriv", "nice", "env", "chroot"];

/// Arguments of `timeout`-like wrappers: the wrapped program (skipping options and timeout's
/// duration / chroot's directory).
fn wrapped<'a>(wrapper: &str, args: &'a [String]) -> Option<&'a str> {
    let mut rest = args.iter().map(String::as_str).skip_while(|a| {
        a.starts_with('-') || a.contains('=') || (wrapper == "nice" && a.parse::<i32>().is_ok())
    });
    if matches!(wrapper, "timeout" | "chroot") {
        rest.next();
    }
    rest.find(|a| !a.starts_with('-'))
}

fn scan_rust(rel: &str, text: &str, crate_text: &str, found: &mut Found) {
    let text = host_part(rel, text);
    let mut at = 0;
    while let Some(i) = text[at..].find("Command::new(") {
        let i = at + i;
        at = i + 1;
        let Some((s, e)) = balanced(&text, i, b'(', b')') else {
            continue;
        };
        let arg = text[s + 1..e - 1].trim();
        let prog = if let Some(lit) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
            Some(lit.to_string())
        } else if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            // A constant: `const QEMU: &str = "qemu-system-x86_64";` in this crate.
            let decl = format!("const {arg}: &str = \"");
            crate_text.find(&decl).and_then(|d| {
                literals(&crate_text[d + decl.len() - 1..])
                    .into_iter()
                    .next()
            })
        } else {
            None
        };
        let Some(prog) = prog else { continue };
        add(found, &prog, rel);
        // The program a wrapper runs: the literals of the following `.args([...])`/`.arg(..)`s.
        if WRAPPERS.contains(&prog.as_str()) {
            let tail = &text[e..text.len().min(e + 400)];
            let end = tail.find(';').unwrap_or(tail.len());
            let args = literals(&tail[..end]);
            if let Some(p) = wrapped(&prog, &args) {
                add(found, p, rel);
                if matches!(p, "sh" | "bash") {
                    shell_in_args(&args, rel, found);
                }
            }
        }
        if matches!(prog.as_str(), "sh" | "bash") {
            let tail = &text[e..text.len().min(e + 2000)];
            let end = tail.find(";\n").unwrap_or(tail.len());
            shell_in_args(&literals(&tail[..end]), rel, found);
        }
    }
    // Helpers: `fn tool(cmd: &str, ..)` with `Command::new(cmd)`; their literal first
    // arguments anywhere in the crate are programs.
    let mut at = 0;
    while let Some(i) = text[at..].find("fn ") {
        let i = at + i;
        at = i + 3;
        let name: String = text[i + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let Some((ps, pe)) = balanced(&text, i, b'(', b')') else {
            continue;
        };
        let Some((bs, be)) = balanced(&text, pe, b'{', b'}') else {
            continue;
        };
        let body = &text[bs..be];
        for param in text[ps + 1..pe - 1].split(',') {
            let Some((p, ty)) = param.split_once(':') else {
                continue;
            };
            let p = p.trim().trim_start_matches("mut ");
            if !ty.trim().starts_with("&") || !ty.contains("str") {
                continue;
            }
            let first = text[ps + 1..pe - 1].split(',').next().unwrap_or("");
            let is_first = first.split(':').next().map(str::trim) == Some(p);
            if body.contains(&format!("Command::new({p})")) && is_first {
                let call = format!("{name}(");
                let mut c = 0;
                while let Some(j) = crate_text[c..].find(&call) {
                    let j = c + j + call.len();
                    c = j;
                    let before = crate_text[..j - call.len()].chars().next_back();
                    if before.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                        continue;
                    }
                    let rest = crate_text[j..].trim_start();
                    if rest.starts_with('"') {
                        if let Some(l) = literals(rest).into_iter().next() {
                            add(found, &l, rel);
                        }
                    }
                }
            }
        }
    }
    // Programs QEMU runs on the host for a guest forward.
    for lit in literals(&text) {
        let mut s = lit.as_str();
        while let Some(k) = s.find("-cmd:") {
            s = &s[k + 5..];
            let prog: String = s.chars().take_while(|c| !c.is_whitespace()).collect();
            add(found, &prog, rel);
        }
    }
}

/// A `sh -c SCRIPT` in a list of literals: parse SCRIPT.
fn shell_in_args(args: &[String], rel: &str, found: &mut Found) {
    if let Some(k) = args.iter().position(|a| a == "-c" || a == "-ec") {
        if let Some(script) = args.get(k + 1) {
            shell_commands(script, rel, found);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shell

/// Keywords, builtins and words that are not programs.
const SHELL_WORDS: &[&str] = &[
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "in",
    "do",
    "done",
    "while",
    "until",
    "case",
    "esac",
    "function",
    "select",
    "time",
    "!",
    "{",
    "}",
    "[",
    "[[",
    "]]",
    "echo",
    "printf",
    "read",
    "export",
    "local",
    "set",
    "unset",
    "cd",
    "exit",
    "return",
    "trap",
    "wait",
    "kill",
    "shift",
    "test",
    "true",
    "false",
    "source",
    ".",
    ":",
    "eval",
    "exec",
    "declare",
    "command",
    "type",
    "pwd",
    "break",
    "continue",
    "readonly",
    "ulimit",
    "umask",
    "hash",
    "pushd",
    "popd",
    "let",
    "getopts",
    "builtin",
    "mapfile",
    "readarray",
    "jobs",
    "fg",
    "bg",
    "disown",
];

/// Words of one command line of shell, `$( .. )` bodies returned separately.
fn shell_commands(src: &str, rel: &str, found: &mut Found) {
    let mut funcs = BTreeSet::new();
    for l in src.lines() {
        let l = l.trim().trim_start_matches("function ");
        if let Some((n, _)) = l.split_once("()") {
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                funcs.insert(n.to_string());
            }
        }
    }
    for cmd in split_commands(src) {
        command_word(&cmd, &funcs, rel, found);
    }
}

/// Splits shell source into simple commands (word lists), descending into `$(..)`,
/// backticks and double quotes; skips comments, single-quoted text and here-documents.
fn split_commands(src: &str) -> Vec<Vec<String>> {
    let c: Vec<char> = src.chars().collect();
    let mut cmds: Vec<Vec<String>> = Vec::new();
    // Stack of open commands (an outer one stays open while a `$(..)` is read).
    let mut stack: Vec<(Vec<String>, String)> = vec![(Vec::new(), String::new())];
    let mut dq = Vec::new(); // per stack level: inside double quotes
    dq.push(false);
    let mut heredoc: Option<String> = None;
    let mut i = 0;
    let finish_word = |stack: &mut Vec<(Vec<String>, String)>| {
        let top = stack.last_mut().expect("stack");
        if !top.1.is_empty() {
            let w = std::mem::take(&mut top.1);
            top.0.push(w);
        }
    };
    let finish_cmd = |stack: &mut Vec<(Vec<String>, String)>, cmds: &mut Vec<Vec<String>>| {
        let top = stack.last_mut().expect("stack");
        if !top.1.is_empty() {
            let w = std::mem::take(&mut top.1);
            top.0.push(w);
        }
        if !top.0.is_empty() {
            cmds.push(std::mem::take(&mut top.0));
        }
    };
    while i < c.len() {
        let ch = c[i];
        let in_dq = *dq.last().expect("dq");
        if in_dq {
            match ch {
                '\\' => {
                    stack
                        .last_mut()
                        .expect("stack")
                        .1
                        .push(c.get(i + 1).copied().unwrap_or(' '));
                    i += 1;
                }
                '"' => *dq.last_mut().expect("dq") = false,
                '$' if c.get(i + 1) == Some(&'(') && c.get(i + 2) != Some(&'(') => {
                    stack.push((Vec::new(), String::new()));
                    dq.push(false);
                    i += 1;
                }
                _ => stack.last_mut().expect("stack").1.push(ch),
            }
            i += 1;
            continue;
        }
        match ch {
            '#' if stack.last().expect("stack").1.is_empty() => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\\' => {
                if c.get(i + 1) != Some(&'\n') {
                    stack
                        .last_mut()
                        .expect("stack")
                        .1
                        .push(c.get(i + 1).copied().unwrap_or(' '));
                }
                i += 1;
            }
            '\'' => {
                // Single-quoted text is kept (trap and sh -c arguments are parsed later).
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    stack.last_mut().expect("stack").1.push(c[i]);
                    i += 1;
                }
            }
            '"' => *dq.last_mut().expect("dq") = true,
            '$' if c.get(i + 1) == Some(&'(') && c.get(i + 2) != Some(&'(') => {
                stack.push((Vec::new(), String::new()));
                dq.push(false);
                i += 1;
            }
            '$' if c.get(i + 1) == Some(&'(') => {
                // $(( arithmetic )): skip to the matching ))
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '(' {
                        depth += 1;
                    } else if c[i] == ')' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                stack.last_mut().expect("stack").1.push('0');
            }
            '$' if c.get(i + 1) == Some(&'{') => {
                while i < c.len() && c[i] != '}' {
                    stack.last_mut().expect("stack").1.push(c[i]);
                    i += 1;
                }
                stack.last_mut().expect("stack").1.push('}');
            }
            ')' if stack.len() > 1 => {
                finish_cmd(&mut stack, &mut cmds);
                stack.pop();
                dq.pop();
                stack.last_mut().expect("stack").1.push('$');
            }
            '<' if c.get(i + 1) == Some(&'<') && c.get(i + 2) != Some(&'<') => {
                // Here-document: remember the delimiter, skip its body at the next newline.
                let mut j = i + 2;
                while j < c.len() && matches!(c[j], ' ' | '-') {
                    j += 1;
                }
                let mut d = String::new();
                while j < c.len() && !c[j].is_whitespace() && !matches!(c[j], ';' | '|' | '&' | ')')
                {
                    if !matches!(c[j], '\'' | '"') {
                        d.push(c[j]);
                    }
                    j += 1;
                }
                heredoc = Some(d);
                finish_word(&mut stack);
                i = j;
                continue;
            }
            '&' if i > 0 && matches!(c[i - 1], '>' | '<') || c.get(i + 1) == Some(&'>') => {
                // `>&2`, `2>&1`, `&>`: a redirection, not a command separator.
                stack.last_mut().expect("stack").1.push(ch);
            }
            '(' if stack.last().expect("stack").1.ends_with('=') => {
                // Array assignment `a=(x y)`: values, not commands. A `)` inside quotes
                // (`a+=("$x (why)")`) does not end it.
                let mut quote = None;
                while i < c.len() && (quote.is_some() || c[i] != ')') {
                    match (quote, c[i]) {
                        (None, q @ ('"' | '\'')) => quote = Some(q),
                        (Some(q), ch) if ch == q => quote = None,
                        _ => {}
                    }
                    i += 1;
                }
                stack.last_mut().expect("stack").1.push_str("()");
            }
            '\n' | ';' | '|' | '&' | '(' | ')' | '`' => {
                finish_cmd(&mut stack, &mut cmds);
                if ch == '\n' {
                    if let Some(d) = heredoc.take() {
                        // Skip lines up to the delimiter line.
                        let mut j = i + 1;
                        loop {
                            let end = (j..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len());
                            let line: String = c[j..end].iter().collect();
                            j = end + 1;
                            if line.trim() == d || j >= c.len() {
                                break;
                            }
                        }
                        i = j;
                        continue;
                    }
                }
            }
            ' ' | '\t' => finish_word(&mut stack),
            _ => stack.last_mut().expect("stack").1.push(ch),
        }
        i += 1;
    }
    while stack.len() > 1 {
        finish_cmd(&mut stack, &mut cmds);
        stack.pop();
    }
    finish_cmd(&mut stack, &mut cmds);
    cmds
}

const KEYWORDS_THEN_COMMAND: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "time", "{", "exec", "command",
];

fn command_word(words: &[String], funcs: &BTreeSet<String>, rel: &str, found: &mut Found) {
    let mut k = 0;
    while k < words.len() {
        let w = words[k].as_str();
        let is_assign = w.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '+')
        });
        if is_assign
            || KEYWORDS_THEN_COMMAND.contains(&w)
            || w.starts_with(['>', '<'])
            || w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('>')
        {
            k += 1;
            continue;
        }
        break;
    }
    let Some(w) = words.get(k) else { return };
    let w = w.as_str();
    if matches!(w, "for" | "case" | "select" | "function")
        || funcs.contains(w)
        || w.ends_with(')')
        || w.contains(['*', '?', '['])
    {
        return;
    }
    if w == "trap" {
        if let Some(script) = words.get(k + 1) {
            // The handler runs in this script, where its functions are defined.
            for cmd in split_commands(script) {
                command_word(&cmd, funcs, rel, found);
            }
        }
        return;
    }
    add(found, w, rel);
    let rest = &words[k + 1..];
    if WRAPPERS.contains(&w) {
        if let Some(p) = wrapped(w, rest) {
            let at = rest.iter().position(|a| a == p).unwrap_or(0);
            command_word(&rest[at..], funcs, rel, found);
        }
    }
    if matches!(w, "sh" | "bash") {
        shell_in_args(rest, rel, found);
    }
}

fn shell_files(ws: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in ["scripts", ".ci"] {
        let Ok(rd) = fs::read_dir(ws.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let text = fs::read_to_string(&p).unwrap_or_default();
            // Shell programs and sourced shell fragments; not the package table.
            let shell = text.starts_with("#!/usr/bin/env bash")
                || text.starts_with("#!/bin/sh")
                || text.starts_with("#!/bin/bash")
                || text.starts_with("# Sourced");
            if shell {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every program the host side runs, with the files that run it.
fn programs(ws: &Path) -> Found {
    let mut found = Found::new();
    let mut files = Vec::new();
    for c in [
        "contract",
        "builder",
        "firstboot",
        "qemu-tests",
        "testsupport",
    ] {
        rust_files(&ws.join(c), &mut files);
    }
    let mut crates: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(ws)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        let krate = rel.split('/').next().unwrap_or("").to_string();
        let t = fs::read_to_string(f).unwrap_or_default();
        crates
            .entry(krate)
            .or_default()
            .push_str(&host_part(&rel, &t));
    }
    for f in &files {
        let rel = f
            .strip_prefix(ws)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        if rel == "testsupport/tests/host_tools.rs" {
            continue; // this file's own examples
        }
        let krate = rel.split('/').next().unwrap_or("");
        let t = fs::read_to_string(f).unwrap_or_default();
        scan_rust(&rel, &t, &crates[krate], &mut found);
    }
    for f in shell_files(ws) {
        let rel = f
            .strip_prefix(ws)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        shell_commands(
            &fs::read_to_string(&f).unwrap_or_default(),
            &rel,
            &mut found,
        );
    }
    // Our own programs (run from target/) and the Rust toolchain (rustup, not Debian).
    for own in [
        "cargo",
        "rustc",
        "rke2",
        "rke2-image",
        "rke2-init",
        "rke2-firstboot",
    ] {
        found.remove(own);
    }
    found
}

fn missing(found: &Found, table: &BTreeSet<String>) -> Vec<String> {
    found
        .iter()
        .filter(|(p, _)| !table.contains(*p))
        .map(|(p, files)| {
            format!(
                "`{p}` (run by {}) is not in scripts/host-packages: add `{p}  <debian-package>  <what for>`",
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

#[test]
fn every_host_program_is_installed_by_setup_host() {
    let ws = workspace();
    let found = programs(&ws);
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    eprintln!("{} host programs: {}", names.len(), names.join(" "));
    // The derivation itself must see the obvious ones.
    for p in [
        "qemu-system-x86_64",
        "sesearch",
        "ssh-keygen",
        "nc",
        "veritysetup",
        "mmdebstrap",
    ] {
        assert!(
            found.contains_key(p),
            "{p} not derived from the code: {names:?}"
        );
    }
    let m = missing(&found, &table(&ws));
    assert!(m.is_empty(), "{}", m.join("\n"));
}

/// A new program in the code or a script is caught, naming program and file.
#[test]
fn a_new_program_is_caught() {
    let mut found = Found::new();
    let rust = "fn f() {\n    let o = std::process::Command::new(\"frobnicate\").arg(\"-x\").output();\n}\n";
    scan_rust("builder/tests/x.rs", rust, rust, &mut found);
    let table: BTreeSet<String> = ["sh".to_string()].into();
    let m = missing(&found, &table);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("`frobnicate` (run by builder/tests/x.rs)"),
        "{m:?}"
    );

    // Constants, helpers, wrappers, guest forwards.
    let rust = "const Q: &str = \"qemu-x\";\nfn tool(cmd: &str, a: &[&str]) { Command::new(cmd).args(a); }\n\
        fn g() { Command::new(Q); tool(\"pwck-x\", &[]); Command::new(\"timeout\").args([\"9\", \"inner-x\"]);\n\
        let n = \"guestfwd=tcp:1.2.3.4:5-cmd:nc-x -N 1\"; Command::new(\"sh\").args([\"-c\", \"a-x | b-x\"]); }\n";
    let mut found = Found::new();
    scan_rust("qemu-tests/src/x.rs", rust, rust, &mut found);
    let got: Vec<&str> = found.keys().map(String::as_str).collect();
    for p in [
        "qemu-x", "pwck-x", "timeout", "inner-x", "nc-x", "sh", "a-x", "b-x",
    ] {
        assert!(got.contains(&p), "{p} not found in {got:?}");
    }
    // Node-side code outside tests runs in the image, not on the host.
    let mut found = Found::new();
    scan_rust(
        "firstboot/src/x.rs",
        "fn f() { Command::new(\"systemctl\"); }",
        "",
        &mut found,
    );
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn shell_commands_are_derived() {
    let script = r#"#!/usr/bin/env bash
set -euo pipefail  # comment: notaprogram
cd "$(dirname "$0")/.."
helper() { echo "a; b"; }
x=$(frob-a --flag | frob-b)
trap 'frob-c -rf "$w"' EXIT
if ! frob-d; then timeout 10 frob-e -x; fi
for p in frob-not1 frob-not2; do nice -n 10 frob-f "$p"; done
cat >"$w/x" <<'EOF'
frob-not3 inside a here-document
EOF
case "$r" in reached*) exit 0 ;; *) exit 1 ;; esac
pkgs=(frob-not5
  frob-not6) # an array
echo x >&2; frob-k 2>&1 | frob-l &>/dev/null
RKE2_X=1 env -i A=b frob-g && sh -c "frob-h; frob-i" || helper
echo "$(frob-j)" 'frob-not4'; target/programs/rke2-image x
"#;
    let mut found = Found::new();
    shell_commands(script, "scripts/x", &mut found);
    let got: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        got,
        [
            "cat", "dirname", "env", "frob-a", "frob-b", "frob-c", "frob-d", "frob-e", "frob-f",
            "frob-g", "frob-h", "frob-i", "frob-j", "frob-k", "frob-l", "nice", "sh", "timeout"
        ]
    );
}
