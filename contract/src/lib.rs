//! The contract between the image (built by `rke2-image`) and the node (`rke2-init`,
//! `rke2-firstboot`): partition types and labels, kernel command-line keys, paths inside the
//! image and the build manifest schema. Both sides import this crate so they cannot drift apart.
//! It also holds the two on-disk formats both sides read and write: GPT (the builder writes it,
//! `rke2-init` grows it for the state partition), the dm-verity superblock and hash tree, and
//! enough ISO 9660 to find a file on the `iso` output (`rke2-init` boots from it, `inspect` reads it).

pub mod cmdline;
pub mod crc;
pub mod gpt;
pub mod iso9660;
pub mod manifest;
pub mod partitions;
pub mod paths;
pub mod release;
pub mod verity;
