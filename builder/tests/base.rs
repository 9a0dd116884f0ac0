//! The base builder against tools nobody here wrote: dpkg-deb reads the stand-in package, and
//! (ignored by default) a real mmdebstrap run whose tarball tar lists.

use std::path::Path;
use std::process::Command;

use rke2_image::base::{self, BaseRequest, NO_INITRAMFS_PACKAGE};

#[test]
fn stand_in_package_is_a_valid_deb_providing_an_initramfs_tool() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("x.deb");
    let bytes = base::dummy_deb(1_700_000_000).unwrap();
    assert_eq!(
        bytes,
        base::dummy_deb(1_700_000_000).unwrap(),
        "not deterministic"
    );
    std::fs::write(&deb, &bytes).unwrap();

    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)
            .output()
            .expect("dpkg-deb is installed");
        assert!(
            out.status.success(),
            "dpkg-deb --field {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), NO_INITRAMFS_PACKAGE);
    assert_eq!(field("Provides"), "linux-initramfs-tool");
    assert_eq!(field("Architecture"), "all");

    // The data part holds no files: installing it changes nothing on disk.
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(names, vec!["./"], "{listing}");
}

fn tar_listing(path: &Path, extra: &[&str]) -> String {
    let out = Command::new("tar")
        .args(extra)
        .arg("-tvf")
        .arg(path)
        .output()
        .expect("tar is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "runs mmdebstrap against a Debian mirror (network, ~5 minutes, root or unshare); CI builds the base once through the CLI"]
fn mmdebstrap_builds_a_lean_base_and_caches_it() {
    let dir = tempfile::tempdir().unwrap();
    let req = BaseRequest::debian_default(1_700_000_000);
    let first = base::ensure(&req, dir.path()).unwrap();
    assert!(!first.reused);
    assert!(
        first.size > 50 << 20,
        "suspiciously small base: {}",
        first.size
    );

    let listing = tar_listing(&first.path, &["--zstd"]);
    let line = |suffix: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in the tarball"))
            .to_string()
    };
    // Device nodes survive (tar -tv shows the type letter first).
    assert!(
        line(" ./dev/null").starts_with('c'),
        "{}",
        line(" ./dev/null")
    );
    // Kernel, systemd-boot and the SELinux policy are there.
    assert!(listing.contains("./boot/vmlinuz-"));
    assert!(listing.contains("./usr/lib/systemd/boot/efi/systemd-bootx64.efi"));
    assert!(listing.contains("./etc/selinux/default/contexts/files/file_contexts"));
    // Lean: no initramfs generator, no initrd, no manuals, no apt lists.
    assert!(!listing.contains("./boot/initrd.img"));
    assert!(!listing.contains("./usr/sbin/update-initramfs"));
    assert!(!listing.contains("./usr/share/man/man1/"));
    assert!(!listing.contains("./var/lib/apt/lists/deb."));
    assert!(!listing.contains(" ./etc/resolv.conf"));
    // Nothing of the build host's cache path (where the stand-in package was mounted from).
    let cache = dir.path().display().to_string();
    assert!(
        !listing.contains(&format!(".{cache}")),
        "cache path leaked into the base"
    );

    // Extended attributes survive: systemd's postinst gives the journal directory POSIX ACLs,
    // which tar shows as `x:` lines under the entry with --xattrs -vv.
    let xattrs = tar_listing(
        &first.path,
        &["--zstd", "--xattrs", "--xattrs-include=*", "-v"],
    );
    let mut lines = xattrs.lines();
    lines
        .find(|l| l.ends_with(" ./var/log/journal/"))
        .expect("./var/log/journal/ in the tarball");
    let next = lines.next().unwrap_or_default();
    assert!(
        next.contains("x:") && next.contains("system.posix_acl"),
        "{next}"
    );

    println!(
        "base {} bytes, sha256 {}, {} entries",
        first.size,
        first.sha256,
        listing.lines().count()
    );

    let second = base::ensure(&req, dir.path()).unwrap();
    assert!(second.reused);
    assert_eq!(second.sha256, first.sha256);

    // Reproducible: a fresh build of the same request (same mirror content) gives the same
    // bytes.
    let other = tempfile::tempdir().unwrap();
    let rebuilt = base::ensure(&req, other.path()).unwrap();
    assert!(!rebuilt.reused);
    assert_eq!(
        rebuilt.sha256, first.sha256,
        "two builds of the same request differ (did the mirror change in between?)"
    );
}
