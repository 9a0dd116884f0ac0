//! `label`: SELinux `security.selinux` labels from the base's own `file_contexts`, or no
//! labels at all when SELinux is disabled.

use rke2_image_contract::paths;

use super::{invalid, stage, BoxError, BuildContext, BuildError};
use crate::definition::SelinuxMode;
use crate::selinux;
use crate::tree::{Blob, Inode, Kind, Tree};

pub(super) fn run(ctx: &mut BuildContext) -> Result<(), BuildError> {
    if ctx.def.selinux == SelinuxMode::Disabled {
        // A base archive may carry labels; an image without SELinux must not pretend to have them.
        ctx.tree.for_each_inode_mut(|_, i| {
            i.xattrs.remove(&b"security.selinux"[..]);
        });
        return Ok(());
    }
    let fc = selinux::FileContexts::from_tree(&ctx.tree).map_err(stage("label"))?.ok_or_else(|| {
        invalid(
            "label",
            format!(
                "security.selinux is {:?} but the base has no SELinux policy (etc/selinux/config and file_contexts); add selinux-policy-default to the base or set `security.selinux: disabled` in {}",
                ctx.def.selinux,
                ctx.file()
            ),
        )
    })?;
    add_state_labels(&mut ctx.tree, &fc, ctx.epoch).map_err(stage("label"))?;
    let s = selinux::label_tree(&mut ctx.tree, &fc);
    ctx.log(&format!(
        "label: {} inodes labelled from the {} policy, {} left unlabelled (<<none>>)",
        s.labelled,
        fc.policy_type(),
        s.unlabelled
    ));
    Ok(())
}

/// Labels for the directories rke2-init creates on the state partition, from the image's own
/// policy (the node has no policy tools in the initrd).
fn add_state_labels(
    tree: &mut Tree,
    fc: &selinux::FileContexts,
    epoch: u64,
) -> Result<(), BoxError> {
    let mut text = String::from(
        "# <state path> <context>: written by rke2-image from this image's file_contexts\n",
    );
    for (state_path, system_path) in paths::STATE_DIRS {
        let label = fc.lookup(system_path.as_bytes(), crate::tree::S_IFDIR | 0o755).ok_or_else(|| {
            format!("the image's SELinux policy has no label for {system_path}, which rke2-init creates on the state partition")
        })?;
        text.push_str(&format!("{state_path} {label}\n"));
    }
    tree.insert_resolved(
        paths::STATE_LABELS.as_bytes(),
        Inode::new(Kind::File(Blob::bytes(text)), 0o644, 0, 0, epoch),
    )?;
    Ok(())
}
