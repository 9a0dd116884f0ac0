//! `rke2-image`: turns an image definition into a bootable, immutable disk image.
//!
//! The build runs as named stages over one context (see [`pipeline`]); each on-disk format
//! has its own module and writes into a region of a plain file, so no stage needs root,
//! mounts or loop devices.

pub mod archive;
pub mod base;
pub mod compose;
pub mod cpio;
pub mod definition;
pub mod erofs;
pub mod erofs_z;
pub mod esp;
pub mod fat;
pub mod initrd;
pub mod inspect;
pub mod kernel_check;
pub mod limits;
pub mod lz4;
pub mod payload;
pub mod pipeline;
pub mod publish;
pub mod release;
pub mod sbom;
pub mod secureboot;
pub mod selinux;
pub mod sign;
pub mod tree;
pub mod uki;
pub mod verify;
