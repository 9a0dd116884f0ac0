//! SELinux labels for every inode of the image, computed from the base's own policy files the
//! way libselinux 3.4's `label_file` backend (`selabel_lookup`, `matchpathcon`, `setfiles`)
//! computes them, so an image is labelled exactly as `setfiles` would label the same tree.
//!
//! Which policy: `SELINUXTYPE=` from `etc/selinux/config` (last such line wins, key matched
//! case-insensitively, value trimmed, as libselinux reads it). When the config file is absent
//! libselinux falls back to its compiled-in default `targeted` (Debian does not patch that
//! default; Debian's `policycoreutils` postinst writes a config with `SELINUXTYPE=default`). A
//! tree with neither a config nor `etc/selinux/targeted` has no policy ([`FileContexts::from_tree`]
//! returns `None`); a config naming a type whose `file_contexts` is missing is an error.
//!
//! Files read, in libselinux's order: `file_contexts`, `file_contexts.homedirs`,
//! `file_contexts.local` (the compiled `.bin` variants are ignored), and the path substitutions
//! `file_contexts.subs_dist` and `file_contexts.subs`.
//!
//! Matching semantics reproduced from libselinux (`label_file.c`, `label_file.h`):
//! - the looked-up path has runs of `/` collapsed and one trailing `/` removed, then the
//!   substitutions are applied (first `.subs`, then `.subs_dist` to the result; inside a file
//!   the LAST matching line wins because libselinux prepends each line to its list);
//! - specs are reordered once: those whose regex has a metacharacter (`.^$?*+|[({`, a
//!   backslash hiding the next character) first, the rest after, each group in file order; the
//!   last spec (in that order) that matches wins, and a winning `<<none>>` means "no label";
//! - a spec whose text up to its second `/` has no metacharacter has a "stem" and is only
//!   tried for paths with the same first component. This libselinux shortcut can change
//!   results (`/usr/?` never matches `/usr`), so it is reproduced, not just used as a filter;
//! - the regex is compiled as PCRE2 `^<spec>$` with `PCRE2_DOTALL` on bytes and searched (not
//!   anchored as a whole), so a top-level `|` splits the anchors and `$` also matches before a
//!   final newline. `translate` turns that into the Rust `regex` dialect (bytes, ASCII
//!   classes, `{` literal unless it starts a counted repeat, PCRE class rules for `]` and
//!   `-`); constructs Rust cannot express (lookaround, backreferences, possessive quantifiers,
//!   `\p`, ...) make the spec an error instead of matching differently.
//!
//! Lookups are prefiltered by each spec's literal prefix (hash buckets per prefix length), and
//! fully literal specs are compared without a regex, which gives the same answers as trying
//! every spec in order.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::{Regex, RegexBuilder};
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::tree::{ReadError, Tree, TreeError, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK};
use crate::tree::{S_IFMT, S_IFREG, S_IFSOCK};

pub const XATTR_NAME: &[u8] = b"security.selinux";

/// libselinux's compiled-in policy type when `etc/selinux/config` does not name one.
pub const LIBSELINUX_DEFAULT_TYPE: &str = "targeted";

#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    #[error("{file}:{line}: {msg} (fix or remove this line)")]
    BadSpec {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("/{file}: cannot read from the image tree: {source}")]
    Read { file: String, source: ReadError },
    #[error(
        "/etc/selinux/config selects SELINUXTYPE={policy_type} but /{file} does not exist: \
         install that policy in the base or fix SELINUXTYPE"
    )]
    MissingPolicy { policy_type: String, file: String },
    #[error("/etc/selinux/config: SELINUXTYPE={0:?} is not a directory name under /etc/selinux")]
    BadPolicyType(String),
}

/// One `file_contexts` line.
#[derive(Debug)]
struct Spec {
    /// File name and line for diagnostics.
    origin: (usize, usize),
    regex_str: String,
    /// `S_IF*` type bits the spec is restricted to, 0 for any.
    mode: u32,
    /// `None` for `<<none>>`.
    context: Option<String>,
    /// libselinux's stem (text before the second `/`), when the spec has one.
    stem: Option<Vec<u8>>,
    has_meta: bool,
    /// Bytes every matching path starts with.
    prefix: Vec<u8>,
    matcher: Matcher,
}

#[derive(Debug)]
enum Matcher {
    /// The whole pattern is this literal string.
    Literal(Vec<u8>),
    /// Checked at parse time, compiled on first use: only a few hundred of a policy's
    /// thousands of regexes ever see a path with their prefix, and compiling is the bulk of
    /// the cost. `None` if compiling failed, which [`validate`] rules out.
    Regex {
        pattern: String,
        re: OnceLock<Option<Regex>>,
    },
}

impl Matcher {
    fn is_match(&self, key: &[u8]) -> bool {
        match self {
            // PCRE's `$` also matches before a final newline.
            Matcher::Literal(lit) => {
                key == lit.as_slice()
                    || (key.len() == lit.len() + 1 && key.starts_with(lit) && key.ends_with(b"\n"))
            }
            Matcher::Regex { pattern, re } => re
                .get_or_init(|| compile(pattern).ok())
                .as_ref()
                .is_some_and(|re| re.is_match(key)),
        }
    }
}

#[derive(Debug, Clone)]
struct Sub {
    src: Vec<u8>,
    dst: Vec<u8>,
}

/// The parsed file-context configuration of one policy.
#[derive(Debug)]
pub struct FileContexts {
    policy_type: String,
    /// Names of the files the specs came from, indexed by `Spec::origin.0`.
    files: Vec<String>,
    /// In libselinux's sorted order; a later spec takes precedence.
    specs: Vec<Spec>,
    /// Literal prefix -> indices into `specs`, ascending.
    buckets: HashMap<Vec<u8>, Vec<u32>>,
    /// Distinct lengths of the keys of `buckets`, ascending.
    prefix_lens: Vec<usize>,
    /// Substitution files in application order (local `.subs` first); within a file, rules in
    /// precedence order (last line first).
    subs: Vec<Vec<Sub>>,
}

/// C `isspace` in the C locale (unlike `u8::is_ascii_whitespace` it includes `\v`).
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// libselinux `spec_hasMetaChars`.
fn has_meta_chars(re: &[u8]) -> bool {
    let mut i = 0;
    while i < re.len() {
        match re[i] {
            b'.' | b'^' | b'$' | b'?' | b'*' | b'+' | b'|' | b'[' | b'(' | b'{' => return true,
            b'\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    false
}

/// libselinux `get_stem_from_spec`.
fn spec_stem(re: &[u8]) -> Option<Vec<u8>> {
    let end = re.get(1..)?.iter().position(|&b| b == b'/')? + 1;
    if re[..end].iter().any(|b| b".^$?*+|[({".contains(b)) {
        return None;
    }
    Some(re[..end].to_vec())
}

/// libselinux `get_stem_from_file_name`.
fn key_stem(key: &[u8]) -> Option<&[u8]> {
    let end = key.get(1..)?.iter().position(|&b| b == b'/')? + 1;
    Some(&key[..end])
}

fn mode_from_type(t: &str) -> Option<u32> {
    Some(match t {
        "-b" => S_IFBLK,
        "-c" => S_IFCHR,
        "-d" => S_IFDIR,
        "-p" => S_IFIFO,
        "-l" => S_IFLNK,
        "-s" => S_IFSOCK,
        "--" => S_IFREG,
        _ => return None,
    })
}

/// A spec regex rewritten for the Rust `regex` crate.
#[derive(Debug, PartialEq, Eq)]
struct Translated {
    /// Pattern body (without the `^`/`$` anchors libselinux adds).
    body: String,
    /// Literal bytes every match starts with (after the implicit `^`).
    prefix: Vec<u8>,
    /// The whole pattern is the literal `prefix`.
    literal: bool,
}

fn push_byte(out: &mut String, b: u8) {
    if b.is_ascii_alphanumeric() || b == b'/' || b == b'_' {
        out.push(b as char);
    } else {
        out.push_str(&format!("\\x{b:02X}"));
    }
}

enum Atom {
    /// Literal bytes (several for `\Q...\E`).
    Lit(Vec<u8>),
    /// A non-literal construct in Rust syntax.
    Other(String),
}

fn hex_val(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// Parses the escape at `src[i] == b'\\'`; returns the atom and the bytes consumed.
/// `in_class` selects PCRE's meaning inside `[...]` (`\b` is backspace there).
fn parse_escape(src: &[u8], i: usize, in_class: bool) -> Result<(Atom, usize), String> {
    let Some(&n) = src.get(i + 1) else {
        return Err("pattern ends with a backslash".into());
    };
    let lit = |b: u8, len: usize| Ok((Atom::Lit(vec![b]), len));
    if !n.is_ascii_alphanumeric() {
        // PCRE: a backslash before any non-alphanumeric character makes it literal.
        return lit(n, 2);
    }
    match n {
        b'd' | b'D' | b's' | b'S' | b'w' | b'W' => Ok((Atom::Other(format!("\\{}", n as char)), 2)),
        b'b' if in_class => lit(0x08, 2),
        b'b' | b'B' | b'A' | b'z' => Ok((Atom::Other(format!("\\{}", n as char)), 2)),
        b'Z' => Ok((Atom::Other("(?:\\n?\\z)".into()), 2)),
        b'n' => lit(b'\n', 2),
        b't' => lit(b'\t', 2),
        b'r' => lit(b'\r', 2),
        b'f' => lit(0x0c, 2),
        b'a' => lit(0x07, 2),
        b'e' => lit(0x1b, 2),
        b'Q' if !in_class => {
            let body = &src[i + 2..];
            let end = body.windows(2).position(|w| w == b"\\E");
            let lits = body[..end.unwrap_or(body.len())].to_vec();
            let used = 2 + lits.len() + if end.is_some() { 2 } else { 0 };
            Ok((Atom::Lit(lits), used))
        }
        b'E' if !in_class => Ok((Atom::Lit(Vec::new()), 2)),
        b'x' => {
            if src.get(i + 2) == Some(&b'{') {
                let close = src[i + 3..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or("unterminated \\x{...}")?;
                let digits = &src[i + 3..i + 3 + close];
                let mut v: u32 = 0;
                if digits.is_empty() {
                    return Err("empty \\x{}".into());
                }
                for &d in digits {
                    v = v
                        .checked_mul(16)
                        .and_then(|v| hex_val(d).map(|h| v + h))
                        .ok_or("bad hex digit in \\x{...}")?;
                    if v > 0xff {
                        return Err("character value in \\x{...} is above 0xff".into());
                    }
                }
                Ok((Atom::Lit(vec![v as u8]), 4 + close))
            } else {
                let mut v = 0u32;
                let mut used = 2;
                while used < 4 {
                    match src.get(i + used).and_then(|&d| hex_val(d)) {
                        Some(h) => v = v * 16 + h,
                        None => break,
                    }
                    used += 1;
                }
                Ok((Atom::Lit(vec![v as u8]), used))
            }
        }
        b'0' => {
            let mut v = 0u32;
            let mut used = 2;
            while used < 4 {
                match src.get(i + used) {
                    Some(&d @ b'0'..=b'7') => v = v * 8 + u32::from(d - b'0'),
                    _ => break,
                }
                used += 1;
            }
            Ok((Atom::Lit(vec![v as u8]), used))
        }
        b'1'..=b'9' => Err("backreferences are not supported".into()),
        _ => Err(format!(
            "escape \\{} is not supported by this labeller",
            n as char
        )),
    }
}

/// Whether `src[i..]` starts a PCRE2 10.42 counted repeat: `{n}`, `{n,}` or `{n,m}`; any other
/// `{` is a literal brace. Returns the length of the quantifier.
fn counted_repeat(src: &[u8], i: usize) -> Option<usize> {
    let rest = &src[i + 1..];
    let d1 = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if d1 == 0 {
        return None;
    }
    match rest.get(d1) {
        Some(b'}') => Some(d1 + 2),
        Some(b',') => {
            let d2 = rest[d1 + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            (rest.get(d1 + 1 + d2) == Some(&b'}')).then_some(d1 + d2 + 3)
        }
        _ => None,
    }
}

const POSIX_CLASSES: &[&str] = &[
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// Translates the class starting at `src[i] == b'['`; returns Rust syntax and bytes consumed.
fn translate_class(src: &[u8], i: usize) -> Result<(String, usize), String> {
    enum Item {
        Byte(u8),
        Set(String),
    }
    let mut j = i + 1;
    let mut out = String::from("[");
    if src.get(j) == Some(&b'^') {
        out.push('^');
        j += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = src.get(j) else {
            return Err("missing terminating ] for a character class".into());
        };
        if c == b']' && !first {
            j += 1;
            break;
        }
        first = false;
        let item = |j: &mut usize| -> Result<Item, String> {
            let c = src[*j];
            if c == b'[' && src.get(*j + 1) == Some(&b':') {
                let rest = &src[*j + 2..];
                let colon = rest.windows(2).position(|w| w == b":]");
                let bracket = rest.iter().position(|&b| b == b']');
                if let (Some(e), Some(b)) = (colon, bracket) {
                    if e + 1 == b {
                        let name = String::from_utf8_lossy(&rest[..e]).into_owned();
                        let bare = name.strip_prefix('^').unwrap_or(&name);
                        if !POSIX_CLASSES.contains(&bare) {
                            return Err(format!("unknown POSIX class [:{name}:]"));
                        }
                        *j += e + 4;
                        return Ok(Item::Set(format!("[:{name}:]")));
                    }
                }
            }
            if c == b'\\' {
                let (atom, used) = parse_escape(src, *j, true)?;
                *j += used;
                return match atom {
                    Atom::Lit(b) if b.len() == 1 => Ok(Item::Byte(b[0])),
                    Atom::Other(s) if s.len() == 2 => Ok(Item::Set(s)),
                    _ => Err("unsupported escape inside a character class".into()),
                };
            }
            *j += 1;
            Ok(Item::Byte(c))
        };
        match item(&mut j)? {
            Item::Set(s) => out.push_str(&s),
            Item::Byte(lo) => {
                // PCRE: `-` is a range only between two single characters and not before `]`.
                if src.get(j) == Some(&b'-') && src.get(j + 1).is_some_and(|&b| b != b']') {
                    j += 1;
                    match item(&mut j)? {
                        Item::Byte(hi) if hi >= lo => {
                            out.push_str(&format!("\\x{lo:02X}-\\x{hi:02X}"));
                        }
                        Item::Byte(_) => return Err("range out of order in character class".into()),
                        Item::Set(_) => return Err("invalid range in character class".into()),
                    }
                } else {
                    out.push_str(&format!("\\x{lo:02X}"));
                }
            }
        }
    }
    out.push(']');
    Ok((out, j - i))
}

/// Rewrites a PCRE2 spec regex (as libselinux compiles it: 8-bit, no UTF, `DOTALL`) into the
/// Rust `regex` dialect, and finds its literal prefix. Constructs Rust cannot express
/// (lookaround, backreferences, possessive quantifiers, ...) are errors rather than guesses.
fn translate(src: &[u8]) -> Result<Translated, String> {
    let mut body = String::new();
    let mut prefix = Vec::new();
    let mut prefix_open = true;
    let mut literal = true;
    let mut last_pushed = false;
    let mut depth = 0usize;
    let mut top_alt = false;
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        match c {
            b'\\' => {
                let (atom, used) = parse_escape(src, i, false)?;
                i += used;
                match atom {
                    Atom::Lit(bytes) => {
                        for &b in &bytes {
                            push_byte(&mut body, b);
                            if prefix_open {
                                prefix.push(b);
                            }
                        }
                        if !bytes.is_empty() {
                            last_pushed = prefix_open;
                        }
                    }
                    Atom::Other(s) => {
                        body.push_str(&s);
                        prefix_open = false;
                        literal = false;
                        last_pushed = false;
                    }
                }
                continue;
            }
            b'*' | b'+' | b'?' | b'{' => {
                let used = if c == b'{' {
                    counted_repeat(src, i)
                } else {
                    Some(1)
                };
                if let Some(used) = used {
                    if last_pushed {
                        prefix.pop();
                    }
                    prefix_open = false;
                    literal = false;
                    last_pushed = false;
                    body.push_str(
                        std::str::from_utf8(&src[i..i + used]).map_err(|e| e.to_string())?,
                    );
                    i += used;
                    match src.get(i) {
                        Some(b'?') => {
                            body.push('?');
                            i += 1;
                        }
                        Some(b'+') => return Err("possessive quantifiers are not supported".into()),
                        _ => {}
                    }
                    continue;
                }
                // A `{` that is not a counted repeat is literal (handled below).
            }
            b'(' => {
                prefix_open = false;
                literal = false;
                last_pushed = false;
                if src.get(i + 1) == Some(&b'*') {
                    return Err("PCRE verbs (*...) are not supported".into());
                }
                if src.get(i + 1) != Some(&b'?') {
                    depth += 1;
                    body.push('(');
                    i += 1;
                    continue;
                }
                let rest = &src[i + 2..];
                if rest.first() == Some(&b'#') {
                    let close = rest
                        .iter()
                        .position(|&b| b == b')')
                        .ok_or("unterminated (?# comment")?;
                    i += 2 + close + 1;
                    continue;
                }
                if rest.first() == Some(&b':') {
                    depth += 1;
                    body.push_str("(?:");
                    i += 3;
                    continue;
                }
                let named = if rest.starts_with(b"P<") {
                    Some(2)
                } else if rest.first() == Some(&b'<') && !matches!(rest.get(1), Some(b'=' | b'!')) {
                    Some(1)
                } else {
                    None
                };
                if let Some(skip) = named {
                    let end = rest
                        .iter()
                        .position(|&b| b == b'>')
                        .ok_or("unterminated group name")?;
                    let name = &rest[skip..end];
                    if name.is_empty()
                        || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    {
                        return Err("bad group name".into());
                    }
                    depth += 1;
                    body.push_str("(?P<");
                    body.push_str(std::str::from_utf8(name).map_err(|e| e.to_string())?);
                    body.push('>');
                    i += 2 + end + 1;
                    continue;
                }
                // Inline options: only those whose meaning is the same in both dialects.
                let flags = rest
                    .iter()
                    .take_while(|b| matches!(b, b'i' | b's' | b'U' | b'-'))
                    .count();
                match rest.get(flags) {
                    Some(b')') if flags > 0 => {
                        body.push_str(std::str::from_utf8(&src[i..i + 3 + flags]).unwrap_or(""));
                        i += 3 + flags;
                    }
                    Some(b':') if flags > 0 => {
                        depth += 1;
                        body.push_str(std::str::from_utf8(&src[i..i + 3 + flags]).unwrap_or(""));
                        i += 3 + flags;
                    }
                    _ => {
                        return Err(
                            "group syntax (?... is not supported (lookaround, atomic groups, \
                             options other than i, s, U)"
                                .into(),
                        )
                    }
                }
                continue;
            }
            b')' => {
                if depth == 0 {
                    return Err("unmatched closing parenthesis".into());
                }
                depth -= 1;
                body.push(')');
                prefix_open = false;
                literal = false;
                last_pushed = false;
                i += 1;
                continue;
            }
            b'|' | b'.' | b'^' | b'$' | b'[' => {
                prefix_open = false;
                literal = false;
                last_pushed = false;
                match c {
                    b'|' => {
                        top_alt |= depth == 0;
                        body.push('|');
                    }
                    b'.' => body.push('.'),
                    b'^' => body.push('^'),
                    // PCRE's `$` (no DOLLAR_ENDONLY) also matches before a final newline.
                    b'$' => body.push_str("(?:\\n?\\z)"),
                    _ => {
                        let (class, used) = translate_class(src, i)?;
                        body.push_str(&class);
                        i += used;
                        continue;
                    }
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        // Any other byte (including `]`, `}` and a non-repeat `{`) is literal in PCRE.
        push_byte(&mut body, c);
        if prefix_open {
            prefix.push(c);
        }
        last_pushed = prefix_open;
        i += 1;
    }
    if depth != 0 {
        return Err("missing closing parenthesis".into());
    }
    if top_alt {
        // `^a|b$`: the second alternative is not anchored at the start.
        prefix.clear();
    }
    Ok(Translated {
        body,
        prefix,
        literal,
    })
}

/// The full Rust pattern for a translated spec: libselinux compiles `^<spec>$`.
fn full_pattern(t: &Translated) -> String {
    format!("(?s-u)^{}(?:\\n?\\z)", t.body)
}

/// Upper bound on the compiled size of a regex, in NFA-state-like units.
fn weight(h: &Hir) -> u64 {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => 1,
        HirKind::Literal(l) => l.0.len() as u64,
        HirKind::Class(Class::Bytes(c)) => c.ranges().len() as u64,
        HirKind::Class(Class::Unicode(c)) => c.ranges().len() as u64,
        HirKind::Repetition(r) => {
            weight(&r.sub).saturating_mul(u64::from(r.max.unwrap_or(r.min).max(1)))
        }
        HirKind::Capture(c) => weight(&c.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => {
            v.iter().map(weight).fold(0, u64::saturating_add)
        }
    }
}

/// Keeps every accepted pattern far below [`NFA_SIZE_LIMIT`], so the deferred compile cannot
/// fail.
const MAX_WEIGHT: u64 = 100_000;
const NFA_SIZE_LIMIT: usize = 64 << 20;

/// Everything compiling could complain about, at parse time.
fn validate(pattern: &str) -> Result<(), String> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    if weight(&hir) > MAX_WEIGHT {
        return Err("counted repetitions make this regex too large".into());
    }
    Ok(())
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(NFA_SIZE_LIMIT)
        .build()
}

/// Collapses runs of `/`, drops one trailing `/` (not from `/` itself), stops at a NUL byte, as
/// libselinux's `lookup_all` does before matching.
fn clean_key(path: &[u8]) -> Vec<u8> {
    let path = path.split(|&b| b == 0).next().unwrap_or_default();
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b == b'/' && out.last() == Some(&b'/') {
            continue;
        }
        out.push(b);
    }
    if out.len() > 1 && out.last() == Some(&b'/') {
        out.pop();
    }
    out
}

/// libselinux `selabel_sub`: first rule (in list order) whose `src` is a whole-component prefix.
fn apply_subs(rules: &[Sub], key: &[u8]) -> Option<Vec<u8>> {
    for r in rules {
        if key.starts_with(&r.src) && matches!(key.get(r.src.len()), None | Some(b'/')) {
            let mut rest = &key[r.src.len()..];
            if !rest.is_empty() && r.dst == b"/" {
                rest = &rest[1..];
            }
            let mut out = r.dst.clone();
            out.extend_from_slice(rest);
            return Some(out);
        }
    }
    None
}

/// Parses one substitution file like libselinux's `selabel_subs_init`; rules come back in
/// precedence order (libselinux prepends each line, so the last line is tried first).
fn parse_subs(text: &str) -> Vec<Sub> {
    let mut rules = Vec::new();
    for line in text.as_bytes().split(|&b| b == b'\n') {
        let mut toks = line
            .split(|&b| c_isspace(b))
            .filter(|t| !t.is_empty())
            .take(2);
        let (Some(src), Some(dst)) = (toks.next(), toks.next()) else {
            continue;
        };
        if src.starts_with(b"#") {
            continue;
        }
        rules.push(Sub {
            src: src.to_vec(),
            dst: dst.to_vec(),
        });
    }
    rules.reverse();
    rules
}

impl FileContexts {
    /// Reads the policy selected by the tree's `etc/selinux/config` (see the module docs).
    /// `None` when the tree has no SELinux policy; errors name the file and line of a bad spec.
    pub fn from_tree(tree: &Tree) -> Result<Option<FileContexts>, SelinuxError> {
        let read = |path: &str| -> Result<Option<String>, SelinuxError> {
            match tree.read_file(path.as_bytes()) {
                Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
                Err(ReadError::Tree(TreeError::NotFound(_))) => Ok(None),
                Err(source) => Err(SelinuxError::Read {
                    file: path.to_string(),
                    source,
                }),
            }
        };
        let config = read("etc/selinux/config")?;
        let policy_type = config
            .as_deref()
            .and_then(policy_type_from_config)
            .unwrap_or_else(|| LIBSELINUX_DEFAULT_TYPE.to_string());
        if policy_type.is_empty()
            || policy_type.contains('/')
            || policy_type == "."
            || policy_type == ".."
        {
            return Err(SelinuxError::BadPolicyType(policy_type));
        }
        let base = format!("etc/selinux/{policy_type}/contexts/files/file_contexts");
        let Some(main) = read(&base)? else {
            if config.is_none() {
                return Ok(None);
            }
            return Err(SelinuxError::MissingPolicy {
                policy_type,
                file: base,
            });
        };
        let mut extra = Vec::new();
        for suffix in ["homedirs", "local"] {
            let name = format!("{base}.{suffix}");
            if let Some(text) = read(&name)? {
                extra.push((format!("/{name}"), text));
            }
        }
        let mut subs = Vec::new();
        for suffix in ["subs_dist", "subs"] {
            subs.push(read(&format!("{base}.{suffix}"))?.unwrap_or_default());
        }
        let main_name = format!("/{base}");
        let extra_refs: Vec<(&str, &str)> = extra
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let subs_refs: Vec<&str> = subs.iter().map(String::as_str).collect();
        let mut fc = FileContexts::parse_named(&main_name, &main, &extra_refs, &subs_refs)?;
        fc.policy_type = policy_type;
        Ok(Some(fc))
    }

    /// Parses `file_contexts` text plus further spec files in the order libselinux reads them
    /// (`.homedirs`, then `.local`), and substitution files in the order
    /// `[file_contexts.subs_dist, file_contexts.subs]` (the later file is applied to a path
    /// first, the earlier one to its result). [`FileContexts::policy_type`] is empty.
    pub fn parse(
        main: &str,
        extra: &[(&str, &str)],
        subs: &[&str],
    ) -> Result<FileContexts, SelinuxError> {
        FileContexts::parse_named("file_contexts", main, extra, subs)
    }

    fn parse_named(
        main_name: &str,
        main: &str,
        extra: &[(&str, &str)],
        subs: &[&str],
    ) -> Result<FileContexts, SelinuxError> {
        let mut files = vec![main_name.to_string()];
        let mut specs = Vec::new();
        parse_specs(0, main_name, main, &mut specs)?;
        for (n, (name, text)) in extra.iter().enumerate() {
            files.push(name.to_string());
            parse_specs(n + 1, name, text, &mut specs)?;
        }
        // libselinux `sort_specs`: stable partition, regexes first, exact paths last.
        let (mut sorted, exact): (Vec<Spec>, Vec<Spec>) =
            specs.into_iter().partition(|s| s.has_meta);
        sorted.extend(exact);
        let mut buckets: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        for (i, s) in sorted.iter().enumerate() {
            buckets.entry(s.prefix.clone()).or_default().push(i as u32);
        }
        let mut prefix_lens: Vec<usize> = buckets.keys().map(Vec::len).collect();
        prefix_lens.sort_unstable();
        prefix_lens.dedup();
        Ok(FileContexts {
            policy_type: String::new(),
            files,
            specs: sorted,
            buckets,
            prefix_lens,
            subs: subs.iter().rev().map(|t| parse_subs(t)).collect(),
        })
    }

    /// The context for `path` (absolute, e.g. `/etc/passwd`) of file type `st_mode & S_IFMT`
    /// (0 matches specs of any type); `None` for `<<none>>` or no matching spec.
    pub fn lookup(&self, path: &[u8], st_mode: u32) -> Option<&str> {
        self.lookup_spec(path, st_mode)
            .and_then(|i| self.specs[i].context.as_deref())
    }

    /// File and line of the spec that decides `path`, for diagnostics.
    pub fn explain(&self, path: &[u8], st_mode: u32) -> Option<(&str, usize, &str)> {
        self.lookup_spec(path, st_mode).map(|i| {
            let s = &self.specs[i];
            (
                self.files[s.origin.0].as_str(),
                s.origin.1,
                s.regex_str.as_str(),
            )
        })
    }

    fn lookup_spec(&self, path: &[u8], st_mode: u32) -> Option<usize> {
        let mut key = clean_key(path);
        if key.is_empty() {
            return None;
        }
        for rules in &self.subs {
            if let Some(k) = apply_subs(rules, &key) {
                key = k;
            }
        }
        let mode = st_mode & S_IFMT;
        let stem = key_stem(&key);
        let mut cands: Vec<u32> = Vec::new();
        for &len in &self.prefix_lens {
            if len > key.len() {
                break;
            }
            if let Some(v) = self.buckets.get(&key[..len]) {
                cands.extend_from_slice(v);
            }
        }
        cands.sort_unstable_by(|a, b| b.cmp(a));
        cands.into_iter().map(|i| i as usize).find(|&i| {
            let s = &self.specs[i];
            (s.mode == 0 || mode == 0 || s.mode == mode)
                && s.stem.as_deref().is_none_or(|st| Some(st) == stem)
                && s.matcher.is_match(&key)
        })
    }

    /// `SELINUXTYPE` of the policy read by [`FileContexts::from_tree`].
    pub fn policy_type(&self) -> &str {
        &self.policy_type
    }

    /// Number of specs loaded.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// `SELINUXTYPE=` as libselinux's `init_selinux_config` reads it.
fn policy_type_from_config(text: &str) -> Option<String> {
    let mut found = None;
    for line in text.split('\n') {
        let line = line.trim_start_matches(|c: char| c.is_ascii() && c_isspace(c as u8));
        if line.starts_with('#') {
            continue;
        }
        let Some(tag) = line.get(..12) else { continue };
        if tag.eq_ignore_ascii_case("SELINUXTYPE=") {
            let v = line[12..]
                .trim_start_matches(|c: char| c.is_ascii() && c_isspace(c as u8))
                .trim_end_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
            found = Some(v.to_string());
        }
    }
    found
}

fn parse_specs(
    file_idx: usize,
    name: &str,
    text: &str,
    out: &mut Vec<Spec>,
) -> Result<(), SelinuxError> {
    for (n, line) in text.as_bytes().split(|&b| b == b'\n').enumerate() {
        let lineno = n + 1;
        let bad = |msg: String| SelinuxError::BadSpec {
            file: name.to_string(),
            line: lineno,
            msg,
        };
        // getline() + C strings: a NUL ends the line.
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let toks: Vec<&[u8]> = line
            .split(|&b| c_isspace(b))
            .filter(|t| !t.is_empty())
            .take(3)
            .collect();
        match toks.first() {
            None => continue,
            Some(t) if t.starts_with(b"#") => continue,
            _ => {}
        }
        if toks.iter().any(|t| !t.is_ascii()) {
            return Err(bad("non-ASCII characters found".into()));
        }
        let tok = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
        let (regex_str, type_str, context) = match toks.as_slice() {
            [r, c] => (tok(r), None, tok(c)),
            [r, t, c] => (tok(r), Some(tok(t)), tok(c)),
            _ => {
                return Err(bad(
                    "line is missing fields (want: regex [type] context)".into()
                ))
            }
        };
        let mode = match &type_str {
            None => 0,
            Some(t) => mode_from_type(t).ok_or_else(|| {
                bad(format!(
                    "invalid file type {t:?} (one of -- -d -l -c -b -p -s)"
                ))
            })?,
        };
        let context = if context == "<<none>>" {
            None
        } else {
            if context.split(':').take(3).filter(|f| !f.is_empty()).count() < 3 {
                return Err(bad(format!(
                    "context {context:?} is not user:role:type[:range] or <<none>>"
                )));
            }
            Some(context)
        };
        let t = translate(regex_str.as_bytes())
            .map_err(|e| bad(format!("regex {regex_str:?}: {e}")))?;
        let matcher = if t.literal {
            Matcher::Literal(t.prefix.clone())
        } else {
            let pattern = full_pattern(&t);
            validate(&pattern).map_err(|e| bad(format!("regex {regex_str:?}: {e}")))?;
            Matcher::Regex {
                pattern,
                re: OnceLock::new(),
            }
        };
        out.push(Spec {
            origin: (file_idx, lineno),
            stem: spec_stem(regex_str.as_bytes()),
            has_meta: has_meta_chars(regex_str.as_bytes()),
            prefix: t.prefix,
            regex_str,
            mode,
            context,
            matcher,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelStats {
    pub labelled: u64,
    pub unlabelled: u64,
}

/// Sets `security.selinux` (value: context + trailing NUL, as the kernel stores it) on every
/// reachable inode; replaces labels the base archive carried, and removes them from inodes
/// the policy leaves unlabelled (`<<none>>` or no match), since a label from wherever the
/// archive was made says nothing about this policy.
///
/// Hard links: `setfiles` labels by each path in walk order and, when a later path of an
/// already labelled inode asks for a different context, warns and keeps the first one. The
/// tree's walk order is sorted path order, so an inode is labelled by its first path in byte
/// order.
pub fn label_tree(tree: &mut Tree, fc: &FileContexts) -> LabelStats {
    let mut stats = LabelStats::default();
    let mut key = Vec::new();
    tree.for_each_inode_mut(|path, inode| {
        key.clear();
        key.push(b'/');
        key.extend_from_slice(path);
        match fc.lookup(&key, inode.st_mode()) {
            Some(ctx) => {
                let mut v = ctx.as_bytes().to_vec();
                v.push(0);
                inode.xattrs.insert(XATTR_NAME.to_vec(), v);
                stats.labelled += 1;
            }
            None => {
                inode.xattrs.remove(XATTR_NAME);
                stats.unlabelled += 1;
            }
        }
    });
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Inode, Kind};

    fn fc(main: &str) -> FileContexts {
        FileContexts::parse(main, &[], &[]).unwrap()
    }

    const C: &str = "system_u:object_r";

    #[test]
    fn translate_escapes_and_prefix() {
        let t = translate(br"/usr/lib/foo\.so(\.[^/]*)*").unwrap();
        assert_eq!(t.prefix, b"/usr/lib/foo.so");
        assert!(!t.literal);
        let t = translate(br"/etc/a\+b").unwrap();
        assert!(t.literal);
        assert_eq!(t.prefix, b"/etc/a+b");
        // A quantified last character is not part of the prefix.
        assert_eq!(translate(b"/etc/ab?c").unwrap().prefix, b"/etc/a");
        assert_eq!(translate(b"/etc/ab{2}").unwrap().prefix, b"/etc/a");
        // `{` that is not a counted repeat is literal in PCRE2 10.42.
        let t = translate(b"/x{a}").unwrap();
        assert!(t.literal);
        assert_eq!(t.prefix, b"/x{a}");
        // Top-level alternation: nothing is a common prefix.
        assert_eq!(translate(b"/a|/b").unwrap().prefix, b"");
        assert!(translate(br"/a(?=b)").is_err());
        assert!(translate(br"/(a)\1").is_err());
        assert!(translate(b"/a[b").is_err());
        assert!(translate(b"/a)").is_err());
        let full = |re: &[u8]| full_pattern(&translate(re).unwrap());
        assert!(validate(&full(b"/a{1000}{1000}")).is_err());
        assert!(validate(&full(b"/a{100}(/.*)?")).is_ok());
    }

    #[test]
    fn classes_follow_pcre_rules() {
        let f = fc(&format!(
            "/c/[]a]x {C}:a_t:s0\n/c/[a-c-]y {C}:b_t:s0\n/c/[[:digit:]_]z {C}:c_t:s0\n/c/[[]w {C}:d_t:s0\n"
        ));
        assert_eq!(f.lookup(b"/c/]x", 0), Some("system_u:object_r:a_t:s0"));
        assert_eq!(f.lookup(b"/c/ax", 0), Some("system_u:object_r:a_t:s0"));
        assert_eq!(f.lookup(b"/c/-y", 0), Some("system_u:object_r:b_t:s0"));
        assert_eq!(f.lookup(b"/c/by", 0), Some("system_u:object_r:b_t:s0"));
        assert_eq!(f.lookup(b"/c/dy", 0), None);
        assert_eq!(f.lookup(b"/c/7z", 0), Some("system_u:object_r:c_t:s0"));
        assert_eq!(f.lookup(b"/c/_z", 0), Some("system_u:object_r:c_t:s0"));
        assert_eq!(f.lookup(b"/c/[w", 0), Some("system_u:object_r:d_t:s0"));
    }

    #[test]
    fn type_restrictions_and_none() {
        let f = fc(&format!(
            "/srv(/.*)?\t{C}:var_t:s0\n/srv/x\t-d\t{C}:dir_t:s0\n/srv/x\t--\t{C}:file_t:s0\n\
             /srv/x\t-l\t<<none>>\n/srv/p -p {C}:fifo_t:s0\n"
        ));
        assert_eq!(
            f.lookup(b"/srv/x", S_IFDIR | 0o755),
            Some("system_u:object_r:dir_t:s0")
        );
        assert_eq!(
            f.lookup(b"/srv/x", S_IFREG | 0o644),
            Some("system_u:object_r:file_t:s0")
        );
        assert_eq!(f.lookup(b"/srv/x", S_IFLNK), None);
        // A char device matches no typed spec for /srv/x and falls back to the regex.
        assert_eq!(
            f.lookup(b"/srv/x", S_IFCHR),
            Some("system_u:object_r:var_t:s0")
        );
        assert_eq!(
            f.lookup(b"/srv/p", S_IFIFO),
            Some("system_u:object_r:fifo_t:s0")
        );
        assert_eq!(
            f.lookup(b"/srv/p", S_IFREG),
            Some("system_u:object_r:var_t:s0")
        );
        // Mode 0: the last spec wins whatever its type.
        assert_eq!(f.lookup(b"/srv/p", 0), Some("system_u:object_r:fifo_t:s0"));
        assert_eq!(f.lookup(b"/other", 0), None);
    }

    #[test]
    fn exact_paths_sort_after_regexes() {
        // The exact path comes first in the file but still wins over the later regex.
        let f = fc(&format!(
            "/etc/shadow {C}:shadow_t:s0\n/etc(/.*)? {C}:etc_t:s0\n"
        ));
        assert_eq!(
            f.lookup(b"/etc/shadow", S_IFREG),
            Some("system_u:object_r:shadow_t:s0")
        );
        assert_eq!(
            f.lookup(b"/etc/passwd", S_IFREG),
            Some("system_u:object_r:etc_t:s0")
        );
        // Among regexes, the last one in the file wins.
        let f = fc(&format!(
            "/var/lib/a.* {C}:a_t:s0\n/var/lib(/.*)? {C}:lib_t:s0\n"
        ));
        assert_eq!(
            f.lookup(b"/var/lib/ab", 0),
            Some("system_u:object_r:lib_t:s0")
        );
        // An escaped metacharacter does not make a spec a regex (libselinux spec_hasMetaChars).
        let f = fc(&format!(
            "/opt/a\\+b {C}:exact_t:s0\n/opt/a.* {C}:re_t:s0\n"
        ));
        assert_eq!(
            f.lookup(b"/opt/a+b", 0),
            Some("system_u:object_r:exact_t:s0")
        );
    }

    #[test]
    fn stem_rule_and_key_cleaning() {
        let f = fc(&format!(
            "/usr/? {C}:usr_t:s0\n/ {C}:root_t:s0\n/home/x/ {C}:h_t:s0\n"
        ));
        // libselinux only tries a spec with stem "/usr" for paths with that stem; "/usr" has none.
        assert_eq!(f.lookup(b"/usr", S_IFDIR), None);
        assert_eq!(f.lookup(b"/usr/", S_IFDIR), None);
        assert_eq!(f.lookup(b"/", S_IFDIR), Some("system_u:object_r:root_t:s0"));
        assert_eq!(
            f.lookup(b"//", S_IFDIR),
            Some("system_u:object_r:root_t:s0")
        );
        assert_eq!(f.lookup(b"", S_IFDIR), None);
        // The trailing slash is removed from the path, so a spec ending in `/` never matches.
        assert_eq!(f.lookup(b"/home/x/", S_IFDIR), None);
    }

    #[test]
    fn dollar_and_alternation_are_pcre() {
        let f = fc(&format!("/a|/b.* {C}:alt_t:s0\n/n/x {C}:n_t:s0\n"));
        // `^/a|/b.*$`: the first branch is only anchored at the start.
        assert_eq!(f.lookup(b"/abc/d", 0), Some("system_u:object_r:alt_t:s0"));
        assert_eq!(f.lookup(b"/q/b/c", 0), Some("system_u:object_r:alt_t:s0"));
        assert_eq!(f.lookup(b"/q/c", 0), None);
        assert_eq!(f.lookup(b"/n/x\n", 0), Some("system_u:object_r:n_t:s0"));
        assert_eq!(f.lookup(b"/n/x\n\n", 0), None);
    }

    #[test]
    fn substitutions() {
        let subs_dist = "# comment\n/lib /usr/lib\n/var/run /run\n/usr/lib64 /usr/lib\n";
        let subs_local = "/srv/data /var/lib\n/srv /\n";
        let f = FileContexts::parse(
            &format!(
                "/usr/lib(/.*)? {C}:lib_t:s0\n/run(/.*)? {C}:run_t:s0\n/var/lib(/.*)? {C}:vl_t:s0\n/x {C}:x_t:s0\n"
            ),
            &[],
            &[subs_dist, subs_local],
        )
        .unwrap();
        assert_eq!(f.lookup(b"/lib/x", 0), Some("system_u:object_r:lib_t:s0"));
        assert_eq!(f.lookup(b"/lib", 0), Some("system_u:object_r:lib_t:s0"));
        // Only whole components are substituted.
        assert_eq!(f.lookup(b"/library", 0), None);
        assert_eq!(
            f.lookup(b"/var/run/foo", 0),
            Some("system_u:object_r:run_t:s0")
        );
        // Local subs first, then dist subs on the result; "/" as target drops the slash.
        assert_eq!(f.lookup(b"/srv/x", 0), Some("system_u:object_r:x_t:s0"));
        // The later line of a file wins: "/srv /" is tried before "/srv/data /var/lib".
        assert_eq!(f.lookup(b"/srv/data/q", 0), None);
    }

    #[test]
    fn extra_files_and_errors_name_file_and_line() {
        let f = FileContexts::parse(
            &format!("/home/[^/]+/.* {C}:home_t:s0\n"),
            &[(
                "file_contexts.local",
                &format!("/home/bob/x {C}:local_t:s0\n"),
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            f.lookup(b"/home/bob/x", 0),
            Some("system_u:object_r:local_t:s0")
        );
        assert_eq!(
            f.explain(b"/home/bob/x", 0),
            Some(("file_contexts.local", 1, "/home/bob/x"))
        );
        let err = |main: &str| FileContexts::parse(main, &[], &[]).unwrap_err().to_string();
        assert!(err("# c\n\n/a\n").starts_with("file_contexts:3: line is missing fields"));
        assert!(err(&format!("/a -x {C}:a_t\n")).contains("file_contexts:1: invalid file type"));
        assert!(err(&format!("/a\t{C}:a_t\n/b(c {C}:b_t\n")).starts_with("file_contexts:2: regex"));
        assert!(err("/a notacontext\n").contains("not user:role:type"));
        assert!(err(&format!("/\u{e9} {C}:a_t\n")).contains("non-ASCII"));
        let e = FileContexts::parse("", &[("x.local", "/a -z b:c:d\n")], &[]).unwrap_err();
        assert!(e.to_string().starts_with("x.local:1:"), "{e}");
    }

    #[test]
    fn config_policy_type() {
        assert_eq!(
            policy_type_from_config("# x\n  selinuxtype = mls \r\nSELINUXTYPE=default\n")
                .as_deref(),
            Some("default")
        );
        assert_eq!(policy_type_from_config("SELINUX=enforcing\n"), None);
    }

    fn file(mode: u32) -> Inode {
        Inode::new(
            Kind::File(crate::tree::Blob::bytes(b"x".to_vec())),
            mode,
            0,
            0,
            0,
        )
    }

    #[test]
    fn from_tree_and_label_tree() {
        let mut t = Tree::new(0);
        assert!(FileContexts::from_tree(&t).unwrap().is_none());
        let fc_text = format!(
            "/.* {C}:default_t:s0\n/ -d {C}:root_t:s0\n/usr/bin(/.*)? {C}:bin_t:s0\n\
             /usr/bin/passwd -- {C}:passwd_exec_t:s0\n/tmp/.* <<none>>\n"
        );
        let put = |t: &mut Tree, p: &str, s: &str| {
            t.insert(
                p.as_bytes(),
                Inode::new(Kind::File(crate::tree::Blob::bytes(s)), 0o644, 0, 0, 0),
            )
            .unwrap();
        };
        // No config: libselinux's default type.
        put(
            &mut t,
            "etc/selinux/targeted/contexts/files/file_contexts",
            &format!("/ {C}:t_t:s0\n"),
        );
        let targeted = FileContexts::from_tree(&t).unwrap().unwrap();
        assert_eq!(targeted.policy_type(), "targeted");
        assert_eq!(
            targeted.lookup(b"/", S_IFDIR),
            Some("system_u:object_r:t_t:s0")
        );
        put(&mut t, "etc/selinux/config", "SELINUXTYPE=../x\n");
        assert!(matches!(
            FileContexts::from_tree(&t),
            Err(SelinuxError::BadPolicyType(_))
        ));
        put(&mut t, "etc/selinux/config", "SELINUXTYPE=mine\n");
        assert!(matches!(
            FileContexts::from_tree(&t),
            Err(SelinuxError::MissingPolicy { .. })
        ));
        put(
            &mut t,
            "etc/selinux/mine/contexts/files/file_contexts",
            &fc_text,
        );
        put(
            &mut t,
            "etc/selinux/mine/contexts/files/file_contexts.subs_dist",
            "/bin /usr/bin\n",
        );
        t.insert(b"usr/bin/passwd", file(0o4755)).unwrap();
        t.link(b"usr/bin/chfn", b"usr/bin/passwd").unwrap();
        let mut tmp = file(0o600);
        tmp.xattrs.insert(XATTR_NAME.to_vec(), b"old\0".to_vec());
        t.insert(b"tmp/x", tmp).unwrap();
        t.insert(b"bin/ls", file(0o755)).unwrap();
        let fc = FileContexts::from_tree(&t).unwrap().unwrap();
        assert_eq!(fc.policy_type(), "mine");
        let stats = label_tree(&mut t, &fc);
        let label = |t: &Tree, p: &[u8]| t.get(p).and_then(|i| i.xattrs.get(XATTR_NAME).cloned());
        assert_eq!(
            label(&t, b""),
            Some(b"system_u:object_r:root_t:s0\0".to_vec())
        );
        assert_eq!(
            label(&t, b"bin/ls"),
            Some(b"system_u:object_r:bin_t:s0\0".to_vec())
        );
        // Hard link: the first path in sorted order (usr/bin/chfn) decides.
        assert_eq!(
            label(&t, b"usr/bin/passwd"),
            Some(b"system_u:object_r:bin_t:s0\0".to_vec())
        );
        assert_eq!(label(&t, b"tmp/x"), None);
        let total = t.unique_inodes().len() as u64;
        assert_eq!(stats.labelled + stats.unlabelled, total);
        assert_eq!(stats.unlabelled, 1);
    }
}
