//! Output emitters: each turns the pieces the [`crate::pipeline`] stages produced into one
//! deliverable. The stages never know which outputs are wanted; an emitter never re-runs a
//! stage.
//!
//! The interface every emitter follows (later steps add `qcow2`, `iso`, `pxe` and `update`
//! beside [`raw`]):
//!
//! - **Input**: the built pieces, read-only: the root filesystem and its verity hash tree (the
//!   root-a regions of the raw image, with the root hash and verity parameters), the kernel,
//!   the initrd, the unified kernel image(s) and the rest of the ESP's files, the embedded
//!   manifest and the SBOM. Nothing is read from the build host again.
//! - **Output**: its files are staged in the output directory through
//!   [`crate::publish::Outputs`] (a companion of the image), so they are renamed into place
//!   together with the image and removed on failure: no half output ever carries a final name.
//! - **Record**: every file it emits is listed with its size and sha256 in the published
//!   manifest's `outputs` (never in the embedded one, which cannot hold the image's own hash).
//! - **Determinism**: bytes depend only on the pieces and the build seed/epoch (no wall-clock
//!   time, no random identifiers, no host paths), like the image itself.
//!
//! `raw` is the one emitter the build always runs: its temporary file is where the stages
//! write the root, verity and ESP regions, and it adds the partition table and publishes.
//! The others derive from the finished raw disk. Which are published is `output.formats`
//! (or `build --format`); without `raw` there the raw disk is still built, as a temporary
//! only, and the manifest's `outputs` lists just what was published.

pub mod iso;
pub mod pxe;
pub mod qcow2;
pub mod raw;
pub mod update;
