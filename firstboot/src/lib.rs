//! Node side of rke2-image.
//!
//! - [`init`]: `rke2-init`, PID 1 of the initrd (verity root, state partition, switch_root).
//! - The first-boot agent (`rke2-firstboot`): config [`sources`], [`dialects`] mapped onto one
//!   [`plan`], node [`identity`] and [`role`], [`render`] into a root directory, static [`network`]
//!   addressing, join
//!   [`preflight`] on :9345, and the [`agent`] driving it all.
//! - [`install`]: installing onto a disk; so far the request and the choice of target disk.

pub mod agent;
pub mod atomic;
pub mod dialects;
pub mod http;
pub mod identity;
pub mod init;
pub mod install;
pub mod network;
pub mod plan;
pub mod preflight;
pub mod render;
pub mod rke2;
pub mod role;
pub mod sources;
pub mod update;
pub mod users;
