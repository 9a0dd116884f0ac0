//! The `pxe` output: `<stem>.pxe/` for network boot, the way Fedora CoreOS ships it (kernel,
//! initramfs and the root as a second initramfs):
//!
//! | file         | what                                                                        |
//! |--------------|-----------------------------------------------------------------------------|
//! | `vmlinuz`    | the kernel (the one inside the UKI)                                         |
//! | `initrd`     | our initrd (the UKI's), NUL-padded to 4 bytes so the next archive aligns    |
//! | `rootfs.img` | uncompressed newc cpio: `rke2-root/root.img` (EROFS) + `rke2-root/root.verity` |
//! | `boot.ipxe`  | iPXE script: the UKI's command line + `rke2.root=initramfs`; relative names   |
//!
//! The kernel unpacks both archives into its initramfs; `rke2-init` (`rke2.root=initramfs`)
//! attaches the two files read-only through loop devices and opens them with dm-verity and the
//! root hash from the command line, exactly as it opens the root partition of a disk.
//!
//! Why the initrd is padded: the kernel starts an uncompressed archive that follows a
//! compressed one only at a 4-byte offset (init/initramfs.c skips NULs to get there), and the
//! EFI stub and iPXE concatenate the files as they are.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rke2_image_contract::{cmdline, verity};

use crate::formats::cpio;
use crate::pipeline::{invalid, stage, BuildError};

/// Where the root and its hash tree are inside `rootfs.img` (the initramfs paths rke2-init
/// reads, without the leading `/` cpio names do not carry).
pub const ROOT_FILE: &str = "rke2-root/root.img";
pub const VERITY_FILE: &str = "rke2-root/root.verity";
const _: () = assert!(same(ROOT_FILE, cmdline::INITRAMFS_ROOT_FILE));
const _: () = assert!(same(VERITY_FILE, cmdline::INITRAMFS_VERITY_FILE));

/// `rel` is `abs` without its leading `/` (a compile-time check of the two names).
const fn same(rel: &str, abs: &str) -> bool {
    let (r, a) = (rel.as_bytes(), abs.as_bytes());
    if a.len() != r.len() + 1 || a[0] != b'/' {
        return false;
    }
    let mut i = 0;
    while i < r.len() {
        if r[i] != a[i + 1] {
            return false;
        }
        i += 1;
    }
    true
}
/// Directory suffix of the output (`<stem>.pxe/`).
pub const SUFFIX: &str = "pxe";
/// The iPXE setting an operator sets (before chaining `boot.ipxe`, or by DHCP) to give every
/// node its configuration URL; `${mac:hexhyp}` is appended by iPXE on the node.
pub const CONFIG_SETTING: &str = "rke2-config-base";

/// What the emitter reads: the boot files, the UKI's command line and where the root and its
/// hash device are in the image file.
pub(crate) struct Pieces<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
    pub image: &'a File,
    /// (offset, length) of the EROFS root in `image`.
    pub root: (u64, u64),
    /// (offset, length) of the verity hash device (superblock + tree) in `image`.
    pub verity: (u64, u64),
    pub mtime: u64,
}

/// The verity hash device's length for a root of `data_blocks` blocks.
pub(crate) fn verity_len(params: &verity::Params) -> u64 {
    verity::hash_device_size(params.data_blocks, params.hash_block_size)
}

/// The kernel command line for a PXE boot: the UKI's, then the root source.
pub fn kernel_args(uki_cmdline: &str) -> String {
    format!(
        "{uki_cmdline} {}={}",
        cmdline::ROOT_SOURCE,
        cmdline::ROOT_INITRAMFS
    )
}

/// `boot.ipxe`: fetches the files beside it by relative name (iPXE resolves them against the
/// script's own URL) and boots. `initrd=` names are for the EFI stub, which loads the initrds
/// from iPXE's file system by these names.
pub fn boot_script(uki_cmdline: &str) -> String {
    let args = kernel_args(uki_cmdline);
    let url = cmdline::CONFIG_URL;
    format!(
        "#!ipxe\n\
         # rke2-image PXE boot: serve this directory over HTTP and chain this script.\n\
         # Set {CONFIG_SETTING} (e.g. http://server/nodes) before chaining to have each node\n\
         # fetch its configuration from <{CONFIG_SETTING}>/<mac with hyphens>.\n\
         isset ${{{CONFIG_SETTING}}} || goto no_config\n\
         kernel vmlinuz initrd=initrd initrd=rootfs.img {args} {url}=${{{CONFIG_SETTING}}}/${{mac:hexhyp}}\n\
         goto initrds\n\
         :no_config\n\
         kernel vmlinuz initrd=initrd initrd=rootfs.img {args}\n\
         :initrds\n\
         initrd initrd\n\
         initrd rootfs.img\n\
         boot\n"
    )
}

/// Reads `len` bytes of `file` from `offset` on (positioned reads: the file is shared).
struct Region<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end - self.at).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += got as u64;
        Ok(got)
    }
}

/// Writes `rootfs.img` (newc cpio of the root and its hash device) to `out`.
pub(crate) fn write_rootfs(p: &Pieces, out: impl Write) -> Result<(), cpio::CpioError> {
    let mut w = cpio::Writer::new(out, p.mtime)?;
    w.dir("rke2-root", 0o700)?;
    for (name, (offset, len)) in [(ROOT_FILE, p.root), (VERITY_FILE, p.verity)] {
        let mut r = Region {
            file: p.image,
            at: offset,
            end: offset + len,
        };
        w.file_from_reader(name, 0o400, len, &mut r)?;
    }
    w.finish()?;
    Ok(())
}

fn write_file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    let path = dir.join(name);
    let f = File::create(&path).map_err(stage("pxe"))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    fill(&mut w)?;
    let f = w.into_inner().map_err(|e| stage("pxe")(e.into_error()))?;
    f.sync_all().map_err(stage("pxe"))
}

/// Fills `dir` (the staged `<stem>.pxe/`) with the four files.
pub(crate) fn emit(dir: &Path, p: &Pieces) -> Result<(), BuildError> {
    let args = kernel_args(p.cmdline);
    crate::esp::check_length(&args)
        .map_err(|m| invalid("pxe", format!("the PXE kernel command line: {m}")))?;
    write_file(dir, "vmlinuz", |w| {
        w.write_all(p.kernel).map_err(stage("pxe"))
    })?;
    write_file(dir, "initrd", |w| {
        let pad = (4 - p.initrd.len() % 4) % 4;
        w.write_all(p.initrd).map_err(stage("pxe"))?;
        w.write_all(&[0u8; 3][..pad]).map_err(stage("pxe"))
    })?;
    write_file(dir, "rootfs.img", |w| {
        write_rootfs(p, w).map_err(stage("pxe"))
    })?;
    write_file(dir, "boot.ipxe", |w| {
        w.write_all(boot_script(p.cmdline).as_bytes())
            .map_err(stage("pxe"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_files_relatively_and_carries_the_line() {
        let s = boot_script("rke2.roothash=ab rke2.slot=a ro fips=1");
        assert!(s.starts_with("#!ipxe\n"));
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(kernel.starts_with("kernel vmlinuz initrd=initrd initrd=rootfs.img rke2.roothash=ab rke2.slot=a ro fips=1 rke2.root=initramfs"), "{kernel}");
        assert!(s.contains("\ninitrd initrd\ninitrd rootfs.img\nboot\n"));
        assert!(s.contains("rke2.config.url=${rke2-config-base}/${mac:hexhyp}\n"));
        assert_eq!(s.matches("\nkernel vmlinuz ").count(), 2);
        assert!(!s.contains("http://") || s.contains("e.g. http://server/nodes"));
    }

    /// Oracle: GNU cpio lists and extracts the archive; contents are the image's regions.
    #[test]
    fn rootfs_cpio_holds_both_regions() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        let mut data = vec![0u8; 3 * 4096];
        data[..4096].fill(1);
        data[4096..8192].fill(2);
        data[8192..].fill(3);
        std::fs::write(&img, &data).unwrap();
        let f = File::open(&img).unwrap();
        let p = Pieces {
            kernel: b"k",
            initrd: b"i",
            cmdline: "x",
            image: &f,
            root: (4096, 4096),
            verity: (8192, 100),
            mtime: 1_700_000_000,
        };
        let mut out = Vec::new();
        write_rootfs(&p, &mut out).unwrap();
        let cpio = d.path().join("rootfs.img");
        std::fs::write(&cpio, &out).unwrap();
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "-F"])
            .arg(&cpio)
            .current_dir(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join(ROOT_FILE)).unwrap(), vec![2u8; 4096]);
        assert_eq!(std::fs::read(x.join(VERITY_FILE)).unwrap(), vec![3u8; 100]);
    }
}
