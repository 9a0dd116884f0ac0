//! Node side of rke2-image.
//!
//! - [`init`]: `rke2-init`, PID 1 of the initrd (verity root, state partition, switch_root).
//! - The first-boot agent (`rke2-firstboot`): config sources, dialects, role, RKE2 config,
//!   join preflight.

pub mod init;
