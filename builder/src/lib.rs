//! `rke2-image`: turns an image definition into a bootable, immutable disk image.
//!
//! - [`pipeline`]: the build, named stages run in order over one build context, producing the
//!   pieces (root + verity, kernel, initrd, UKI, ESP contents, manifest, SBOM).
//! - [`outputs`]: emitters that turn those pieces into deliverables (`raw` today).
//! - [`formats`]: one module per on-disk format (EROFS, FAT, cpio, tar, UKI, the tree model);
//!   each writes into a region of a plain file, so no stage needs root, mounts or loop devices.
//! - The rest: the definition, the base cache, composition helpers (`compose`, `payload`,
//!   `initrd`, `esp`), policy (`selinux`, `kernel_check`, `limits`) and the commands besides
//!   `build` (`release`, `sign`, `verify`, `inspect`, `secureboot`).

pub mod base;
pub mod civil;
pub mod compose;
pub mod definition;
pub mod esp;
pub mod formats;
pub mod initrd;
pub mod inspect;
pub mod iso_customize;
pub mod kernel_check;
pub mod limits;
pub mod outputs;
pub mod payload;
pub mod pipeline;
pub mod publish;
pub mod release;
pub mod sbom;
pub mod secureboot;
pub mod selinux;
pub mod sign;
pub mod verify;

// The formats' old paths (`rke2_image::erofs`, `crate::tree`, ...) stay valid for the tests,
// the fuzz targets and the other crates.
pub use formats::{archive, cpio, erofs, erofs_z, fat, lz4, tree, uki};
