//! `rke2-sample-release DIR VERSION`: writes the sample release (the test fixture around the
//! stand-in `rke2`, a TEST DOUBLE, not Kubernetes) into DIR, for `scripts/demo` on a machine
//! that cannot download a real release. The stand-in is the `rke2` built next to this program.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rke2_testsupport::fixture::{write_release, FixtureOptions};

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, version] = args.as_slice() else {
        anyhow::bail!("usage: rke2-sample-release DIR VERSION (e.g. v1.33.1+rke2r1)");
    };
    let exe = std::env::current_exe().context("locating rke2-sample-release")?;
    let standin = exe
        .parent()
        .map(|d| d.join("rke2"))
        .unwrap_or_else(|| PathBuf::from("rke2"));
    anyhow::ensure!(
        standin.is_file(),
        "{} is missing; build it with `cargo build -p rke2-testsupport --bins`",
        standin.display()
    );
    write_release(dir.as_ref(), &standin, &FixtureOptions::new(version))
        .with_context(|| format!("writing the sample release into {dir}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rke2-sample-release: {e:#}");
            ExitCode::FAILURE
        }
    }
}
