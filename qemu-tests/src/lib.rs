//! QEMU boot-test harness.
//!
//! - [`vm`]: start QEMU (UEFI through OVMF pflash, or direct kernel boot), capture the serial
//!   console, wait for markers with timeouts; every failure carries the console tail.
//! - [`probe`]: parse the `RKE2-PROBE key=value` lines printed by the test-only overlay
//!   `overlays/qemu-test` (a unit that reports facts and powers off).
//! - [`cluster`]: several VMs from copies of one image, configured through fw_cfg or a
//!   NoCloud drive, with per-node timings.
//! - [`pxe`]: network boot through OVMF PXE and iPXE from an HTTP server on 127.0.0.1.
//! - [`hub`]: a private Ethernet segment between VMs over UDP on 127.0.0.1.
//! - [`built`]: test images built by the real pipeline (`rke2-image build`) with the
//!   test-only probe overlay.

pub mod built;
pub mod cluster;
pub mod hub;
pub mod probe;
pub mod pxe;
pub mod vm;

/// What every image test needs: the Debian base tarball (`RKE2_TEST_BASE`) and the directory
/// with `rke2-image`, `rke2-init` and `rke2-firstboot` (`RKE2_TEST_PROGRAMS`). None when one is
/// missing: the test skips, or fails under CI / `RKE2_TEST_STRICT` ([`rke2_testsupport::prereq`]).
pub fn test_inputs() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let base = rke2_testsupport::prereq::test_base()?;
    let programs = rke2_testsupport::prereq::test_programs()?;
    Some((base, programs))
}

/// `let img = need!(image());`: the value, or end the test (the missing prerequisite was
/// already reported through [`rke2_testsupport::prereq`] by whatever returned None).
#[macro_export]
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}
