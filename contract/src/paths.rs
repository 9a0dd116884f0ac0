//! Paths inside the image and on the ESP that both sides rely on.

/// The build manifest, stored on the ESP (it records the root hash, so it cannot live in the
/// verified root itself).
pub const ESP_MANIFEST: &str = "rke2-image/manifest.json";
/// Loader configuration and entries on the ESP (Boot Loader Specification type #1).
pub const ESP_LOADER_CONF: &str = "loader/loader.conf";
pub const ESP_ENTRIES_DIR: &str = "loader/entries";
pub const ESP_FALLBACK_BOOT: &str = "EFI/BOOT/BOOTX64.EFI";
pub const ESP_SYSTEMD_BOOT: &str = "EFI/systemd/systemd-bootx64.efi";

/// systemd-boot inside a Debian root (package systemd-boot-efi).
pub const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The init inside the initrd.
pub const INITRD_INIT: &str = "init";
/// Where the initrd finds the modules closure (same layout as the root's /lib/modules).
pub const INITRD_MODULES: &str = "lib/modules";

/// Where the image keeps files the node programs read (inside the verified root).
pub const IMAGE_SHARE: &str = "usr/share/rke2-image";
/// Air-gap image tarballs preloaded into the verified root.
pub const AIRGAP_IMAGES: &str = "usr/share/rke2-image/images";
/// Defaults baked into the image for `rke2-firstboot` (lowest-priority config source).
pub const BAKED_NODE_CONFIG: &str = "usr/share/rke2-image/node-config.yaml";
/// Written by the builder: facts about the image (name, version) for the node programs.
pub const IMAGE_INFO: &str = "usr/share/rke2-image/image-info.json";

/// Where `rke2-init` mounts the state partition inside the new root.
pub const STATE_MOUNT: &str = "run/rke2-state";
/// Stamp written on the state filesystem when it was created (first boot).
pub const STATE_CREATED_STAMP: &str = ".rke2-state-created";
