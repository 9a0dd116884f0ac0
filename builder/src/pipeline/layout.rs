//! `layout`: plans the root filesystem and sizes every partition region of the disk; refuses a
//! tree that does not fit `disk.rootSize`. The partitions' GUIDs derive from the seed and, for
//! root-a and its verity partition, from the root hash ([`Layout::partitions`]).

use rke2_image_contract::gpt::Guid;
use rke2_image_contract::{partitions, verity};

use super::rootfs::Root;
use super::{align_up, derive16, invalid, root_too_small, stage, BuildContext, BuildError, MIB};
use crate::erofs;

/// One partition region of the output file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub offset: u64,
    pub size: u64,
}

impl Region {
    pub fn first_lba(&self) -> u64 {
        self.offset / super::SECTOR
    }
    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / super::SECTOR - 1
    }
}

/// One partition of the table: its contract entry, region, GUID and the bytes in use.
pub(crate) struct Partition {
    pub spec: partitions::PartitionSpec,
    pub region: Region,
    pub guid: Guid,
    pub used: u64,
}

/// The partition table to be: disk GUID, the partitions in table order, the disk size.
pub(crate) struct Partitions {
    pub disk_guid: Guid,
    pub list: [Partition; 5],
}

pub(super) struct Layout {
    /// The root filesystem's plan (written by the rootfs stage).
    pub plan: erofs::Plan,
    pub esp: Region,
    pub root_a: Region,
    pub verity_a: Region,
    pub root_b: Region,
    pub verity_b: Region,
    /// The whole disk, including the state partition's free space and the backup GPT.
    pub disk_size: u64,
}

pub(super) fn run(ctx: &BuildContext, seed: &[u8; 32]) -> Result<Layout, BuildError> {
    let def = ctx.def;
    let erofs_opts = erofs::Options {
        uuid: derive16(seed, "erofs-uuid"),
        volume_name: "rke2-root".into(),
        build_time: ctx.epoch,
    };
    let plan =
        erofs::plan_compressed(&ctx.tree, &erofs_opts, def.compression).map_err(stage("layout"))?;
    // A compressed root's size is known once it is written (the rootfs stage names it then).
    if def.compression == erofs::Compression::None && plan.size() > def.root_size {
        return Err(root_too_small("layout", def, plan.size()));
    }
    // Load checked the sum for the same sizes; a `Definition` built in code is checked here,
    // before the additions below.
    if crate::definition::disk_size(def.esp_size, def.root_size, def.state_size).is_none() {
        return Err(invalid(
            "layout",
            "the partition sizes add up to more than a disk image can hold; lower disk.rootSize or disk.stateSize",
        ));
    }
    let slot_blocks = def.root_size / partitions::BLOCK;
    let hash_size = align_up(
        verity::hash_device_size(slot_blocks, partitions::BLOCK as u32),
        MIB,
    );
    let mut cursor = MIB;
    let mut next = |size: u64| {
        let r = Region {
            offset: cursor,
            size,
        };
        cursor += size;
        r
    };
    let esp = next(def.esp_size);
    let root_a = next(def.root_size);
    let verity_a = next(hash_size);
    let root_b = next(def.root_size);
    let verity_b = next(hash_size);
    // Free space for the state partition rke2-init creates on first boot, then 1 MiB for the
    // backup GPT (keeping the end aligned). Zeros: sparse in the file.
    let disk_size = cursor + def.state_size + MIB;
    debug_assert_eq!(
        Some(disk_size),
        crate::definition::disk_size(def.esp_size, def.root_size, def.state_size)
    );
    Ok(Layout {
        plan,
        esp,
        root_a,
        verity_a,
        root_b,
        verity_b,
        disk_size,
    })
}

impl Layout {
    /// The partitions with their GUIDs, once the root hash is known. `esp_used` is what the
    /// ESP's files add up to.
    pub fn partitions(&self, seed: &[u8; 32], root: &Root, esp_used: u64) -> Partitions {
        let mut rh_first = [0u8; 16];
        rh_first.copy_from_slice(&root.root_hash[..16]);
        let mut rh_last = [0u8; 16];
        rh_last.copy_from_slice(&root.root_hash[16..]);
        let part = |spec, region, guid, used| Partition {
            spec,
            region,
            guid,
            used,
        };
        // systemd's convention: the root partition's UUID is the first half of the root hash,
        // the verity partition's the second half.
        Partitions {
            disk_guid: Guid::from_hash(derive16(seed, "disk-guid")),
            list: [
                part(
                    partitions::ESP,
                    self.esp,
                    Guid::from_hash(derive16(seed, "esp")),
                    esp_used,
                ),
                part(
                    partitions::ROOT_A,
                    self.root_a,
                    Guid::from_hash(rh_first),
                    root.written.size,
                ),
                part(
                    partitions::ROOT_A_VERITY,
                    self.verity_a,
                    Guid::from_hash(rh_last),
                    verity::hash_device_size(root.params.data_blocks, root.params.hash_block_size),
                ),
                part(
                    partitions::ROOT_B,
                    self.root_b,
                    Guid::from_hash(derive16(seed, "root-b")),
                    0,
                ),
                part(
                    partitions::ROOT_B_VERITY,
                    self.verity_b,
                    Guid::from_hash(derive16(seed, "root-b-verity")),
                    0,
                ),
            ],
        }
    }
}
