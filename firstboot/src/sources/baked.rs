//! Defaults baked into the image (`/usr/share/rke2-image/node-config.yaml`).

use std::path::PathBuf;

use rke2_image_contract::paths;

use super::{read_limited, Found, Source, SourceError};

#[derive(Debug)]
pub struct Baked {
    /// The node's root directory.
    pub root: PathBuf,
}

impl Source for Baked {
    fn name(&self) -> &'static str {
        "defaults baked into the image"
    }
    fn fetch(&self) -> Result<Option<Found>, SourceError> {
        Ok(
            read_limited(&self.root.join(paths::BAKED_NODE_CONFIG))?.map(|bytes| Found {
                origin: format!("image /{}", paths::BAKED_NODE_CONFIG),
                bytes,
                meta_hostname: None,
            }),
        )
    }
}
