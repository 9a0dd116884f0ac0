//! The prerequisite helper as a test binary sees it: this file re-runs its own executable for
//! the `child_*` tests with chosen environments (the env of the running process is shared by
//! all tests, so it is never changed in-process).

use std::process::{Command, Output};

fn run_child(test: &str, strict: Option<&str>) -> Output {
    let exe = std::env::current_exe().expect("own executable");
    let mut c = Command::new(exe);
    c.args(["--exact", test, "--test-threads=1"])
        .env("RKE2_PREREQ_CHILD", "1")
        .env_remove("CI")
        .env_remove("RKE2_TEST_STRICT")
        .env_remove("RKE2_TEST_NO_SUCH_INPUT");
    if let Some(v) = strict {
        c.env("RKE2_TEST_STRICT", v);
    }
    c.output().expect("run own executable")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Only does something when re-run by the tests below.
#[test]
fn child_needs_an_unset_input() {
    if std::env::var_os("RKE2_PREREQ_CHILD").is_none() {
        return;
    }
    let Some(_) = rke2_testsupport::prereq::env_path("RKE2_TEST_NO_SUCH_INPUT", "a test input")
    else {
        return;
    };
    panic!("RKE2_TEST_NO_SUCH_INPUT was set");
}

#[test]
fn child_needs_a_program_that_does_not_exist() {
    if std::env::var_os("RKE2_PREREQ_CHILD").is_none() {
        return;
    }
    if !rke2_testsupport::prereq::program("rke2-no-such-program", "no-such-package") {
        return;
    }
    panic!("found rke2-no-such-program");
}

#[test]
fn strict_mode_fails_naming_the_missing_input() {
    let o = run_child("child_needs_an_unset_input", Some("1"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("RKE2_TEST_NO_SUCH_INPUT (a test input)"),
        "{}",
        text(&o)
    );
    let o = run_child("child_needs_a_program_that_does_not_exist", Some("true"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("program `rke2-no-such-program`"),
        "{}",
        text(&o)
    );
}

#[test]
fn plain_run_skips_with_one_summary_line() {
    for strict in [None, Some("0")] {
        let o = run_child("child_needs_an_unset_input", strict);
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("SKIPPED")).collect();
        assert_eq!(lines.len(), 1, "{t}");
        assert!(
            lines[0].contains("SKIPPED 1 test(s) in prereq-")
                && lines[0]
                    .contains("RKE2_TEST_NO_SUCH_INPUT (a test input): child_needs_an_unset_input"),
            "{t}"
        );
    }
}
