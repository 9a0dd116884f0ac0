//! `kernel`: picks the kernel, checks its configuration against `kernel-config/`, and finds
//! the files the boot stages take from the base (kernel, systemd-boot, the EFI stub,
//! os-release), refusing any that is missing or implausibly large.

use rke2_image_contract::{manifest, paths};

use super::{invalid, stage, BuildContext, BuildError};
use crate::tree::{Blob, Kind, Tree};
use crate::{initrd, kernel_check, limits, uki};

/// The kernel and the boot files, as blobs of the tree (read later, beside the rootfs).
pub(super) struct Kernel {
    pub version: String,
    pub vmlinuz: Blob,
    pub systemd_boot: Blob,
    pub stub: Blob,
    pub os_release: Blob,
}

pub(super) fn run(ctx: &mut BuildContext) -> Result<Kernel, BuildError> {
    let tree = &ctx.tree;
    let kernels = initrd::kernel_versions(tree);
    let kver = match (&ctx.def.kernel_version, kernels.as_slice()) {
        (Some(v), _) if kernels.contains(v) => v.clone(),
        (Some(v), _) => {
            return Err(invalid(
                "kernel",
                format!(
                    "kernel.version {v:?} is not in the base (it has: {})",
                    kernels.join(", ")
                ),
            ))
        }
        (None, [one]) => one.clone(),
        (None, []) => return Err(invalid(
            "kernel",
            "the base has no kernel (usr/lib/modules/<version>/modules.dep); add linux-image-amd64",
        )),
        (None, many) => {
            return Err(invalid(
                "kernel",
                format!(
                    "the base has several kernels ({}); choose one with kernel.version",
                    many.join(", ")
                ),
            ))
        }
    };
    let vmlinuz_path = format!("boot/vmlinuz-{kver}");
    let kernel_blob = file_blob(tree, &vmlinuz_path).ok_or_else(|| {
        invalid(
            "kernel",
            format!("/{vmlinuz_path} is missing from the base"),
        )
    })?;
    let sdboot_blob = file_blob(tree, paths::SYSTEMD_BOOT_EFI).ok_or_else(|| {
        invalid(
            "kernel",
            format!(
                "/{} is missing: add systemd-boot-efi to the base",
                paths::SYSTEMD_BOOT_EFI
            ),
        )
    })?;
    let stub_blob = file_blob(tree, uki::STUB).ok_or_else(|| {
        invalid(
            "kernel",
            format!(
                "/{} is missing: add systemd-boot-efi to the base (the unified kernel image is built from its stub)",
                uki::STUB
            ),
        )
    })?;
    let (osrel_path, osrel_blob) = ["etc/os-release", "usr/lib/os-release"]
        .into_iter()
        .find_map(|p| file_blob(tree, p).map(|b| (p, b)))
        .ok_or_else(|| {
            invalid(
                "kernel",
                "the tree has no /etc/os-release for the unified kernel image's .osrel",
            )
        })?;
    for (path, blob, limit) in [
        (
            vmlinuz_path.as_str(),
            &kernel_blob,
            (limits::KERNEL, "a kernel"),
        ),
        (
            paths::SYSTEMD_BOOT_EFI,
            &sdboot_blob,
            (limits::SYSTEMD_BOOT, "a boot loader"),
        ),
        (uki::STUB, &stub_blob, (limits::EFI_STUB, "an EFI stub")),
        (osrel_path, &osrel_blob, (limits::OS_RELEASE, "os-release")),
    ] {
        limits::check_with(path.as_bytes(), blob.len(), limit).map_err(stage("kernel"))?;
    }
    let config_path = format!("boot/config-{kver}");
    let config = tree
        .read_file(config_path.as_bytes())
        .map_err(|e| invalid("kernel", format!("/{config_path}: {e}; the kernel configuration is needed to check the options the image relies on")))?;
    let fragments = kernel_check::builtin_fragments().map_err(stage("kernel"))?;
    let kreport = kernel_check::check(&String::from_utf8_lossy(&config), &fragments);
    if !kreport.is_ok() {
        return Err(invalid(
            "kernel",
            format!("kernel {kver} lacks options the image needs:\n{kreport}"),
        ));
    }
    let warned = kreport.warnings().len();
    ctx.checks.push(manifest::Check {
        name: "kernel-config".into(),
        result: if warned == 0 { "passed" } else { "warned" }.into(),
        detail: format!(
            "{kver}: {} options checked, {warned} optional missing",
            kreport.findings.len()
        ),
    });
    ctx.log(&format!(
        "kernel: {kver}, configuration has every required option ({warned} optional missing)"
    ));
    Ok(Kernel {
        version: kver,
        vmlinuz: kernel_blob,
        systemd_boot: sdboot_blob,
        stub: stub_blob,
        os_release: osrel_blob,
    })
}

/// A regular file of the tree (following symlinks) as a blob.
fn file_blob(tree: &Tree, path: &str) -> Option<Blob> {
    let real = tree.resolve(path.as_bytes(), true).ok()?;
    match &tree.get(&real)?.kind {
        Kind::File(b) => Some(b.clone()),
        _ => None,
    }
}
