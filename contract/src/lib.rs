//! The contract between the image (built by `rke2-image`) and the node (`rke2-init`,
//! `rke2-firstboot`): partition types and labels, kernel command-line keys, paths inside the
//! image and the build manifest schema. Both sides import this crate so they cannot drift apart.
//! It also holds the on-disk formats both sides read or write: GPT (the builder writes it,
//! `rke2-init` grows it for the state partition) and the dm-verity superblock and hash tree;
//! and, for the `iso` output, an ISO 9660 directory reader and the embed area's layout (the
//! builder's `iso customize` writes it, the agent's `medium` source and `rke2-init` read them).

pub mod cmdline;
pub mod crc;
pub mod embed;
pub mod gpt;
pub mod iso9660;
pub mod manifest;
pub mod partitions;
pub mod paths;
pub mod release;
pub mod update;
pub mod verity;
