//! Facts about RKE2 release artifacts that the builder and the test fixtures share.

/// Parts of a release that have their own air-gap tarball and image list
/// (`rke2-images-<part>.linux-<arch>.tar.zst` and `.txt`).
pub const IMAGE_PARTS: &[&str] = &[
    "core",
    "canal",
    "cilium",
    "calico",
    "multus",
    "flannel",
    "ingress-nginx",
    "harvester",
    "vsphere",
];
