//! The one place where tests meet a missing prerequisite (the Debian base, a host program, loop
//! devices, a kernel feature).
//!
//! Under CI (`CI` set, as `.ci/run` runs) or `RKE2_TEST_STRICT` (exported by `scripts/test`) a
//! missing prerequisite FAILS the test, naming what is missing: a green run means every test
//! really ran. Elsewhere a plain `cargo test` may skip; each test binary then prints one summary
//! line at exit naming the skipped tests and what they lacked, so a skip is never silent.
//!
//! ```no_run
//! # fn t() {
//! let Some(base) = rke2_testsupport::prereq::test_base() else { return };
//! # let _ = base; }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

/// Tests skipped so far in this binary: what was missing -> test names.
static SKIPPED: Mutex<BTreeMap<String, BTreeSet<String>>> = Mutex::new(BTreeMap::new());
static AT_EXIT: Once = Once::new();

/// True when a missing prerequisite must fail the test: `CI` or `RKE2_TEST_STRICT` set to
/// anything but empty, `0` or `false`.
pub fn strict() -> bool {
    strict_from(std::env::var_os("CI").as_deref())
        || strict_from(std::env::var_os("RKE2_TEST_STRICT").as_deref())
}

fn strict_from(v: Option<&OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The running test's name (libtest names each test's thread after the test).
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("main")
        .to_string()
}

/// Records that the running test cannot run because `what` is missing. Strict: panics with
/// `what` (the test fails). Otherwise the caller returns early and the skip is listed in this
/// binary's summary line at exit.
pub fn missing(what: impl std::fmt::Display) {
    let what = what.to_string();
    if strict() {
        panic!("missing test prerequisite (CI or RKE2_TEST_STRICT is set, so this is a failure, not a skip): {what}");
    }
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` with libc's atexit; it runs once, on
        // the main thread, when the test harness returns from main.
        unsafe {
            atexit(print_summary);
        }
    });
    let mut s = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    s.entry(what).or_default().insert(test_name());
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn print_summary() {
    let s = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().ok();
    let bin = exe
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(line) = summary(&bin, &s) {
        // eprintln: cargo shows stderr of a test binary; stdout is flushed and closed by now.
        eprintln!("{line}");
    }
}

/// One line: `SKIPPED 3 test(s) in BIN -- WHAT: a, b; WHAT2: c` (None when nothing skipped).
fn summary(bin: &str, skipped: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    let n: usize = skipped.values().map(BTreeSet::len).sum();
    if n == 0 {
        return None;
    }
    let parts: Vec<String> = skipped
        .iter()
        .map(|(what, tests)| {
            let t: Vec<&str> = tests.iter().map(String::as_str).collect();
            format!("{what}: {}", t.join(", "))
        })
        .collect();
    Some(format!(
        "SKIPPED {n} test(s) in {bin} -- {} (set RKE2_TEST_STRICT=1 or CI=true to make this a failure)",
        parts.join("; ")
    ))
}

/// The path in environment variable `var`, or [`missing`] naming it and `what` it should be.
pub fn env_path(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => {
            missing(format!("{var} ({what})"));
            None
        }
    }
}

/// The Debian base tarball named by `RKE2_TEST_BASE`.
pub fn test_base() -> Option<PathBuf> {
    env_path(
        "RKE2_TEST_BASE",
        "a Debian base tarball: `target/programs/rke2-image base` prints one",
    )
}

/// The directory with rke2-image, rke2-init and rke2-firstboot named by `RKE2_TEST_PROGRAMS`.
pub fn test_programs() -> Option<PathBuf> {
    env_path(
        "RKE2_TEST_PROGRAMS",
        "the directory scripts/build-programs fills: target/programs",
    )
}

/// True if `program` is found on PATH; otherwise [`missing`] naming it and its Debian package.
pub fn program(program: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(program);
            p.metadata().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    });
    if !found {
        missing(format!(
            "program `{program}` (Debian package {package}; scripts/setup-host installs it)"
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_values() {
        assert!(!strict_from(None));
        assert!(!strict_from(Some(OsStr::new(""))));
        assert!(!strict_from(Some(OsStr::new("0"))));
        assert!(!strict_from(Some(OsStr::new("False"))));
        assert!(strict_from(Some(OsStr::new("true"))));
        assert!(strict_from(Some(OsStr::new("1"))));
    }

    #[test]
    fn summary_names_tests_and_what_they_lacked() {
        let mut m = BTreeMap::new();
        assert_eq!(summary("t-1", &m), None);
        m.insert(
            "RKE2_TEST_BASE (x)".to_string(),
            BTreeSet::from(["b".to_string(), "a".to_string()]),
        );
        m.insert(
            "program `sesearch`".to_string(),
            BTreeSet::from(["c".to_string()]),
        );
        let line = summary("t-1", &m).unwrap_or_default();
        assert!(
            line.starts_with(
                "SKIPPED 3 test(s) in t-1 -- RKE2_TEST_BASE (x): a, b; program `sesearch`: c"
            ),
            "{line}"
        );
    }
}
