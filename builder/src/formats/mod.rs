//! On-disk formats, each written (or read) by our own code into a region of a plain file or
//! into memory: no stage needs root, mounts or loop devices. These modules know nothing about
//! image definitions or stages; the [`crate::pipeline`] stages and the [`crate::outputs`]
//! emitters call them.
//!
//! | module     | format                                                                |
//! |------------|-----------------------------------------------------------------------|
//! | `tree`     | in-memory model of a root filesystem (path -> inode, bytes by reference) |
//! | `archive`  | base archives (tar, tar.gz, tar.zst) read as streams into a tree       |
//! | `erofs`    | EROFS root filesystem writer (uncompressed or LZ4)                     |
//! | `erofs_z`  | EROFS LZ4 cluster layout                                               |
//! | `lz4`      | the liblz4 calls EROFS compression needs                               |
//! | `cpio`     | cpio newc writer (the initrd)                                          |
//! | `fat`      | FAT32 writer and reader (the ESP)                                      |
//! | `uki`      | unified kernel images (systemd stub + kernel + initrd + command line)  |

pub mod archive;
pub mod cpio;
pub mod erofs;
pub mod erofs_z;
pub mod fat;
pub mod lz4;
pub mod tree;
pub mod uki;
