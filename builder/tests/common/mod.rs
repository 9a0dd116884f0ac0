//! Shared by the builder's integration tests that build images from a synthetic base.

use std::process::{Command, Output};

use rke2_image_contract::paths;

/// A command's standard output and error, for messages.
#[allow(dead_code)] // not every test binary that includes this module runs commands
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd`, which must succeed; its output.
#[allow(dead_code)] // not every test binary that includes this module runs commands
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup-host installs it)"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

/// The kernel version of the synthetic base.
pub const KVER: &str = "6.1.0-99-amd64";

/// Directories the synthetic base's files live in, parents first.
pub const BASE_DIRS: &[&str] = &["etc", "boot", "usr", "usr/lib", "opt"];

/// The smallest root the builder accepts: os-release, passwd, a kernel whose configuration has
/// every option the images need, modules metadata naming the boot modules as built in,
/// systemd-boot and the 252-shaped EFI stub the UKI is built from.
pub fn base_files() -> Vec<(String, Vec<u8>)> {
    let mut config = String::new();
    for f in rke2_image::kernel_check::builtin_fragments().expect("builtin fragments") {
        for r in f.requirements {
            config.push_str(&format!("{}=y\n", r.option));
        }
    }
    let builtin: String = rke2_image::initrd::BOOT_MODULES
        .iter()
        .map(|m| format!("kernel/drivers/{m}.ko\n"))
        .collect();
    let md = format!("usr/lib/modules/{KVER}");
    vec![
        (
            "etc/os-release".into(),
            b"ID=debian\nVERSION_ID=12\n".to_vec(),
        ),
        (
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        (format!("boot/vmlinuz-{KVER}"), vec![0x4d; 8192]),
        (format!("boot/config-{KVER}"), config.into_bytes()),
        (format!("{md}/modules.dep"), Vec::new()),
        (format!("{md}/modules.builtin"), builtin.into_bytes()),
        (paths::SYSTEMD_BOOT_EFI.into(), vec![0x5a; 4096]),
        (
            rke2_image::uki::STUB.into(),
            rke2_testsupport::pe::stub_like_252(),
        ),
    ]
}

/// The synthetic base as a tar archive, with `extra` files added (their directories must be
/// among [`BASE_DIRS`]).
// Not every test binary that includes this module builds from a tar.
#[allow(dead_code)]
pub fn base_tar(extra: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut files = base_files();
    files.extend(extra);
    let mut b = tar::Builder::new(Vec::new());
    for dir in BASE_DIRS {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, dir, &[][..]).expect("tar in memory");
    }
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..])
            .expect("tar in memory");
    }
    b.into_inner().expect("tar in memory")
}

/// Incompressible bytes (xorshift64 from `state`, which must not be 0), so a root keeps them as
/// data blocks and its hash tree gets more than one level.
// Not every test binary that includes this module needs them.
#[allow(dead_code)]
pub fn noise(state: u64, n: usize) -> Vec<u8> {
    rke2_testsupport::noise(state, n)
}
