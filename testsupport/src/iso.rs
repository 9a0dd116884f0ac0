//! ISO 9660 images written by xorriso: the oracle the project's ISO 9660 readers (the
//! contract's `iso9660`, the agent's `medium` source) are tested against.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Writes the directory `tree` as an ISO 9660 image (level 3, Rock Ridge with normalised
/// owners) to `out` with `xorriso -as mkisofs`, plus `extra` mkisofs options.
pub fn mkisofs(tree: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let o = Command::new("xorriso")
        .args([
            "-no_rc",
            "-as",
            "mkisofs",
            "-quiet",
            "-iso-level",
            "3",
            "-r",
        ])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(tree)
        .output()
        .context("running xorriso (scripts/setup-host installs it)")?;
    if !o.status.success() {
        bail!("xorriso failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}
