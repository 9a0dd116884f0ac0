//! `fetch`: makes sure the base exists (built with mmdebstrap and cached, or the archive the
//! definition names), reads it as a stream into the context's tree, and fixes the epoch.

use super::{invalid, stage, BuildContext, BuildError, MIB};
use crate::definition::BaseSource;
use crate::{archive, base};

pub(super) fn run(ctx: &mut BuildContext) -> Result<(), BuildError> {
    let base_path = match &ctx.def.base {
        BaseSource::Archive(p) => p.clone(),
        BaseSource::Debian {
            suite,
            mirror,
            packages,
        } => {
            // The base has its own fixed epoch so `rke2-image base` and every build share one cached
            // base; the image's own epoch clamps timestamps later anyway.
            let mut req = base::BaseRequest::debian_default(base::DEFAULT_EPOCH);
            req.suite = suite.clone();
            req.mirror = mirror.clone();
            req.packages.extend(packages.iter().cloned());
            ctx.log(&format!(
                "fetch: base {} ({} packages), cache {}",
                req.suite,
                req.packages.len(),
                ctx.opts.cache_dir.display()
            ));
            let r = base::ensure(&req, &ctx.opts.cache_dir).map_err(stage("fetch"))?;
            ctx.log(&format!(
                "fetch: base {} {}",
                if r.reused { "reused" } else { "built" },
                r.path.display()
            ));
            r.path
        }
    };
    let stats = archive::load(&base_path, &mut ctx.tree).map_err(stage("fetch"))?;
    ctx.log(&format!(
        "fetch: {} entries, {} MiB of file data",
        stats.entries,
        stats.content_bytes / MIB
    ));
    ctx.add_input("base", &base_path, stats.sha256.clone(), stats.size);
    // Without an explicit epoch the newest timestamp in the base is used: still a function of
    // the inputs only.
    let tree = &ctx.tree;
    let epoch = ctx
        .opts
        .source_date_epoch
        .or(ctx.def.epoch)
        .unwrap_or_else(|| {
            tree.iter()
                .map(|(_, id)| tree.inode(id).mtime)
                .max()
                .unwrap_or(0)
        });
    if epoch > crate::definition::EPOCH_MAX {
        let newest = tree
            .iter()
            .max_by_key(|(_, id)| tree.inode(*id).mtime)
            .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        return Err(invalid(
            "fetch",
            format!(
                "the base's newest entry /{newest} is dated {epoch}, after 2106-02-07, the latest time the initrd and ESP can store; set `epoch:` in {} (or SOURCE_DATE_EPOCH) to clamp timestamps",
                ctx.file()
            ),
        ));
    }
    ctx.epoch = epoch;
    Ok(())
}
