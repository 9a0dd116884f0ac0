//! The fragments in `kernel-config/` against a real kernel: the Debian base's own
//! `/boot/config-<version>` (read from the base tarball through the tree model), and
//! `modinfo`/`modules.builtin` of the same kernel as an independent oracle for "module"
//! versus "built-in".

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use rke2_image::kernel_check::{check, config_from_tree, load_fragments, Have};
use rke2_image::tree::Tree;
use std::path::{Path, PathBuf};

fn fragments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config")
}

#[test]
fn fragments_parse() {
    let frags = load_fragments(&fragments_dir()).unwrap();
    let names: Vec<&str> = frags.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "boot.config",
            "ipvs.optional.config",
            "rke2.config",
            "security.config"
        ]
    );
    assert!(frags.iter().all(|f| !f.requirements.is_empty()));
    assert!(frags.iter().any(|f| f.optional));
}

#[test]
fn debian_base_kernel_meets_required_fragments() {
    let Some(base) = rke2_testsupport::prereq::test_base() else {
        return;
    };
    let mut tree = Tree::new(0);
    rke2_image::archive::load(Path::new(&base), &mut tree).unwrap();
    let (kver, config) = config_from_tree(&tree).unwrap();
    let frags = load_fragments(&fragments_dir()).unwrap();
    let report = check(&config, &frags);
    assert!(report.is_ok(), "{report}");

    // Oracle: every option we see as a module has its .ko in the kernel's module tree, and
    // every built-in driver option we check for is in modules.builtin (the kernel build's
    // own lists), for a few options whose module names are known.
    let builtin = String::from_utf8(
        tree.read_file(format!("lib/modules/{kver}/modules.builtin").as_bytes())
            .unwrap(),
    )
    .unwrap();
    let dep = String::from_utf8(
        tree.read_file(format!("lib/modules/{kver}/modules.dep").as_bytes())
            .unwrap(),
    )
    .unwrap();
    for (option, module) in [
        ("CONFIG_DM_VERITY", "dm-verity.ko"),
        ("CONFIG_EROFS_FS", "erofs.ko"),
        ("CONFIG_OVERLAY_FS", "overlay.ko"),
        ("CONFIG_VXLAN", "vxlan.ko"),
        ("CONFIG_BRIDGE_NETFILTER", "br_netfilter.ko"),
    ] {
        let f = report.findings.iter().find(|f| f.option == option).unwrap();
        let in_dep = dep.lines().any(|l| {
            l.split(':')
                .next()
                .is_some_and(|p| p.ends_with(&format!("/{module}")))
        });
        let in_builtin = builtin.lines().any(|l| l.ends_with(&format!("/{module}")));
        match f.have {
            Have::Module => assert!(in_dep && !in_builtin, "{option}"),
            Have::BuiltIn => assert!(in_builtin, "{option}"),
            _ => panic!("{option} absent"),
        }
    }
    // And a kernel without dm-verity fails the check, naming the option and its state.
    let broken = config.replace("CONFIG_DM_VERITY=m", "# CONFIG_DM_VERITY is not set");
    let r = check(&broken, &frags);
    assert!(!r.is_ok());
    assert!(
        r.to_string()
            .contains("CONFIG_DM_VERITY: needs built-in or module (=y/=m), kernel has absent"),
        "{r}"
    );
}
