//! Disk layout: GPT partition numbers, labels and Discoverable Partitions Specification type GUIDs.

/// A GPT type GUID in its textual (mixed-endian on disk) form, upper case.
pub type TypeGuid = &'static str;

pub const ESP_TYPE: TypeGuid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const ROOT_X86_64_TYPE: TypeGuid = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const ROOT_VERITY_X86_64_TYPE: TypeGuid = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
pub const VAR_TYPE: TypeGuid = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// One row of the partition table every image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    /// 1-based GPT entry number.
    pub number: u32,
    pub label: &'static str,
    pub type_guid: TypeGuid,
}

pub const ESP: PartitionSpec = PartitionSpec {
    number: 1,
    label: "esp",
    type_guid: ESP_TYPE,
};
pub const ROOT_A: PartitionSpec = PartitionSpec {
    number: 2,
    label: "root-a",
    type_guid: ROOT_X86_64_TYPE,
};
pub const ROOT_A_VERITY: PartitionSpec = PartitionSpec {
    number: 3,
    label: "root-a-verity",
    type_guid: ROOT_VERITY_X86_64_TYPE,
};
pub const ROOT_B: PartitionSpec = PartitionSpec {
    number: 4,
    label: "root-b",
    type_guid: ROOT_X86_64_TYPE,
};
pub const ROOT_B_VERITY: PartitionSpec = PartitionSpec {
    number: 5,
    label: "root-b-verity",
    type_guid: ROOT_VERITY_X86_64_TYPE,
};
/// Not written by the builder: `rke2-init` creates it on first boot in the space after the
/// last partition, filling the disk.
pub const STATE: PartitionSpec = PartitionSpec {
    number: 6,
    label: "state",
    type_guid: VAR_TYPE,
};

/// The partitions the builder writes, in table order.
pub const BUILT: [PartitionSpec; 5] = [ESP, ROOT_A, ROOT_A_VERITY, ROOT_B, ROOT_B_VERITY];

/// Filesystem label of the ESP (FAT volume label, 11 bytes max).
pub const ESP_FS_LABEL: &str = "RKE2-ESP";
/// Filesystem label of the ext4 state partition.
pub const STATE_FS_LABEL: &str = "rke2-state";

/// Sector size the images are laid out for.
pub const SECTOR: u64 = 512;
/// Every partition starts and ends on this boundary.
pub const ALIGN: u64 = 1024 * 1024;
/// Filesystem and verity block size (must equal the page size for EROFS on Linux 6.1).
pub const BLOCK: u64 = 4096;
