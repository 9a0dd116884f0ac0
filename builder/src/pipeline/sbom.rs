//! `sbom`: the SPDX 2.3 SBOM of the composed root, staged to be published beside the image
//! and returned for the ESP.

use super::{stage, BuildContext, BuildError};
use crate::{publish, sbom};

pub(super) fn run(
    ctx: &mut BuildContext,
    outputs: &mut publish::Outputs,
) -> Result<Vec<u8>, BuildError> {
    let def = ctx.def;
    let rke2 = def
        .rke2
        .as_ref()
        .map(|r| (r.version.as_str(), r.origin.as_str()));
    let s = sbom::build(
        &ctx.tree,
        &sbom::Inputs {
            name: &def.name,
            version: &def.version,
            epoch: ctx.epoch,
            rke2,
            inputs: &ctx.inputs,
        },
    )
    .map_err(stage("sbom"))?;
    for n in &s.notes {
        ctx.log(n);
    }
    let path = outputs
        .add_companion(sbom::SUFFIX, s.json.clone())
        .map_err(stage("sbom"))?;
    ctx.log(&format!(
        "sbom: {} ({} KiB): {} Debian packages, {} container images",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        s.json.len().div_ceil(1024),
        s.debs,
        s.images
    ));
    Ok(s.json)
}
