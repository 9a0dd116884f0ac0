//! `rootfs` and `verity`: the planned EROFS written straight into the root-a region of the
//! output file, then its dm-verity hash tree and superblock into root-a-verity.

use std::fs::File;

use rke2_image_contract::{partitions, verity};
use sha2::{Digest, Sha256};

use super::layout::Layout;
use super::{derive16, root_too_small, stage, BuildError};
use crate::definition::Definition;
use crate::erofs;
use crate::tree::Tree;

/// The written root and its verity parameters.
pub(super) struct Root {
    pub written: erofs::Written,
    pub params: verity::Params,
    pub root_hash: [u8; 32],
}

impl Root {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
}

/// Runs on the main thread while the initrd is built beside it, so it takes the tree and the
/// definition rather than the whole context (whose log is not shared between threads).
pub(super) fn run(
    tree: &Tree,
    def: &Definition,
    layout: &Layout,
    seed: &[u8; 32],
    out: &File,
) -> Result<Root, BuildError> {
    let salt = Sha256::new()
        .chain_update(seed)
        .chain_update(b"verity-salt")
        .finalize()
        .to_vec();
    let (root_a, verity_a) = (layout.root_a, layout.verity_a);
    let written =
        erofs::write(tree, &layout.plan, out, root_a.offset, root_a.size).map_err(|e| match e {
            erofs::ErofsError::TooLarge { needed, .. } => root_too_small("rootfs", def, needed),
            e => stage("rootfs")(e),
        })?;
    let params = verity::Params {
        data_block_size: partitions::BLOCK as u32,
        hash_block_size: partitions::BLOCK as u32,
        data_blocks: written.size / partitions::BLOCK,
        salt,
        uuid: derive16(seed, "verity-uuid"),
        algorithm: "sha256".into(),
    };
    let root_hash = verity::format(out, root_a.offset, out, verity_a.offset, &params)
        .map_err(stage("verity"))?;
    Ok(Root {
        written,
        params,
        root_hash,
    })
}
