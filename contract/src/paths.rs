//! Paths inside the image and on the ESP that both sides rely on.

/// The build manifest, stored on the ESP (it records the root hash, so it cannot live in the
/// verified root itself).
pub const ESP_MANIFEST: &str = "rke2-image/manifest.json";
/// The ed25519 signature of [`ESP_MANIFEST`]'s exact bytes: always [`ESP_SIGNATURE_SIZE`]
/// bytes, the 64-byte signature then zeros; all zeros = unsigned. Its size is fixed so that
/// `rke2-image sign` can fill in the clusters of an already built image in place.
pub const ESP_SIGNATURE: &str = "rke2-image/manifest.json.sig";
pub const ESP_SIGNATURE_SIZE: usize = 4096;
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
/// Extra manifests / HelmChartConfig files baked from the definition; the first-boot agent
/// links them into the server manifests directory on servers (that directory is node state).
pub const BAKED_MANIFESTS: &str = "usr/share/rke2-image/manifests";
/// Defaults baked into the image for `rke2-firstboot` (lowest-priority config source).
pub const BAKED_NODE_CONFIG: &str = "usr/share/rke2-image/node-config.yaml";
/// Written by the builder: facts about the image (name, version) for the node programs.
pub const IMAGE_INFO: &str = "usr/share/rke2-image/image-info.json";

/// Where `rke2-init` mounts the state partition inside the new root.
pub const STATE_MOUNT: &str = "run/rke2-state";
/// Stamp written on the state filesystem when it was created (first boot).
pub const STATE_CREATED_STAMP: &str = ".rke2-state-created";

/// SELinux labels for the directories `rke2-init` creates on the state filesystem, written
/// by the builder (computed from the image's own `file_contexts`). One line per directory:
/// `<path relative to the state root, "." for the root> <context>`; `#` starts a comment.
pub const STATE_LABELS: &str = "usr/share/rke2-image/state-labels";

/// Directories `rke2-init` creates on the state filesystem, relative to its root, each with
/// the path in the running system whose label it must carry (what the builder looks up in
/// `file_contexts` to write [`STATE_LABELS`]). Overlay upper and work directories take the
/// label of the directory they overlay, so the merged directory keeps it.
pub const STATE_DIRS: [(&str, &str); 11] = [
    // The state root is mounted under /run, whose entries file_contexts leaves unlabelled
    // (`<<none>>`); it holds /var's data, so it takes /var's label.
    (".", "/var"),
    ("etc", "/etc"),
    ("etc/upper", "/etc"),
    ("etc/work", "/etc"),
    ("opt", "/opt"),
    ("opt/upper", "/opt"),
    ("opt/work", "/opt"),
    ("var", "/var"),
    ("root", "/root"),
    ("home", "/home"),
    ("srv", "/srv"),
];

/// Load list of the initrd: one module per line (path relative to `lib/modules/<kver>`, or
/// name); `rke2-init` loads them and their dependencies in `modules.dep` order.
pub const INITRD_MODULE_LIST: &str = "etc/rke2-init/modules";
