//! QEMU boot-test harness.
//!
//! - [`vm`]: start QEMU (UEFI through OVMF pflash, or direct kernel boot), capture the serial
//!   console, wait for markers with timeouts; every failure carries the console tail.
//! - [`probe`]: parse the `RKE2-PROBE key=value` lines printed by the test-only overlay
//!   `overlays/qemu-test` (a unit that reports facts and powers off).
//! - [`cluster`]: several VMs from copies of one image, configured through fw_cfg or a
//!   NoCloud drive, with per-node timings.
//! - [`hub`]: a private Ethernet segment between VMs over UDP on 127.0.0.1.
//! - [`built`]: test images built by the real pipeline (`rke2-image build`) with the
//!   test-only probe overlay.

pub mod built;
pub mod cluster;
pub mod hub;
pub mod probe;
pub mod vm;

/// Message printed by tests that need a Debian base and do not have one.
pub const SKIP_NO_BASE: &str = "SKIPPED (set RKE2_TEST_BASE to a Debian base tarball)";

/// What every image test needs: the Debian base tarball (`RKE2_TEST_BASE`) and the directory
/// with `rke2-image`, `rke2-init` and `rke2-firstboot` (`RKE2_TEST_PROGRAMS`). None (the
/// test skips) without a base.
pub fn test_inputs() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let base = std::env::var_os("RKE2_TEST_BASE")?;
    let programs = std::env::var_os("RKE2_TEST_PROGRAMS").unwrap_or_else(|| {
        panic!(
            "RKE2_TEST_PROGRAMS must name the directory with rke2-image, rke2-init and \
             rke2-firstboot (scripts/test sets it)"
        )
    });
    Some((base.into(), programs.into()))
}

/// `let img = need!(image());`: the value, or print [`SKIP_NO_BASE`] and end the test.
#[macro_export]
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => {
                println!("{}", $crate::SKIP_NO_BASE);
                return;
            }
        }
    };
}
