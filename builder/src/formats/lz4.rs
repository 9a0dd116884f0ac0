//! The two liblz4 calls EROFS compression needs, wrapped safely.
//!
//! EROFS stores compressed data in fixed-size physical clusters, so the compressor has to
//! "compress as much input as fits in N bytes". The reference liblz4 (built from source by
//! `lz4-sys`, the implementation mkfs.erofs links) has exactly that in
//! `LZ4_compress_destSize` and `LZ4_compress_HC_destSize`; pure-Rust crates (lz4_flex) only
//! compress a whole input. `lz4-sys` links the library but does not declare these two, so they
//! are declared here against its `lz4` link.

use std::os::raw::{c_char, c_int, c_void};

// Keeps lz4-sys (and so the liblz4 it builds and links) in the dependency graph.
use lz4_sys as _;

extern "C" {
    fn LZ4_compress_destSize(
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
    ) -> c_int;
    fn LZ4_sizeofStateHC() -> c_int;
    fn LZ4_compress_HC_destSize(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        target_dst_size: c_int,
        level: c_int,
    ) -> c_int;
    fn LZ4_decompress_safe(
        src: *const c_char,
        dst: *mut c_char,
        compressed_size: c_int,
        dst_capacity: c_int,
    ) -> c_int;
}

/// Highest LZ4HC level (`LZ4HC_CLEVEL_MAX`).
pub const HC_LEVEL_MAX: u8 = 12;
/// liblz4's and mkfs.erofs's default LZ4HC level (`LZ4HC_CLEVEL_DEFAULT`).
pub const HC_LEVEL_DEFAULT: u8 = 9;
/// Largest match distance the LZ4 block format allows (`LZ4_DISTANCE_MAX`).
pub const MAX_DISTANCE: u16 = 65535;

/// Which LZ4 compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The fast compressor.
    Fast,
    /// LZ4HC at a level 1..=12.
    High(u8),
}

/// A compressor with its working state (the LZ4HC state is ~256 KiB; one per thread).
pub struct Compressor {
    level: Level,
    /// LZ4HC state, 8-byte aligned as liblz4 requires.
    state: Vec<u64>,
}

impl Compressor {
    pub fn new(level: Level) -> Compressor {
        let state = match level {
            Level::Fast => Vec::new(),
            Level::High(_) => {
                // SAFETY: a pure function returning the size of the HC state.
                let bytes = unsafe { LZ4_sizeofStateHC() };
                vec![0u64; (bytes.max(0) as usize).div_ceil(8)]
            }
        };
        Compressor { level, state }
    }

    /// Compresses a prefix of `src` into at most `dst.len()` bytes; returns (input bytes
    /// consumed, output bytes written). (0, 0) means not even one byte fitted.
    pub fn compress_dest_size(&mut self, src: &[u8], dst: &mut [u8]) -> (usize, usize) {
        // Sizes are clamped to what the C API can express; callers pass at most a few MiB.
        let mut consumed = src.len().min(i32::MAX as usize / 2) as c_int;
        let cap = dst.len().min(i32::MAX as usize) as c_int;
        let written = match self.level {
            // SAFETY: src is valid for `consumed` bytes and dst for `cap` bytes; liblz4 reads
            // at most *src_size bytes, writes at most target_dst_size bytes and stores the
            // consumed count back.
            Level::Fast => unsafe {
                LZ4_compress_destSize(
                    src.as_ptr().cast(),
                    dst.as_mut_ptr().cast(),
                    &mut consumed,
                    cap,
                )
            },
            // SAFETY: as above; `state` is LZ4_sizeofStateHC() bytes, 8-byte aligned, owned by
            // this compressor and (re)initialised by the call.
            Level::High(level) => unsafe {
                LZ4_compress_HC_destSize(
                    self.state.as_mut_ptr().cast(),
                    src.as_ptr().cast(),
                    dst.as_mut_ptr().cast(),
                    &mut consumed,
                    cap,
                    c_int::from(level),
                )
            },
        };
        if written <= 0 || consumed <= 0 {
            return (0, 0);
        }
        (consumed as usize, written as usize)
    }
}

/// Decompresses one LZ4 block into `dst`; returns the decompressed length, None on bad input.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let len = c_int::try_from(src.len()).ok()?;
    let cap = c_int::try_from(dst.len()).ok()?;
    // SAFETY: src/dst are valid for their lengths; the _safe decoder never reads or writes
    // outside them, whatever the input.
    let n = unsafe { LZ4_decompress_safe(src.as_ptr().cast(), dst.as_mut_ptr().cast(), len, cap) };
    usize::try_from(n).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0u32..20_000 {
            v.extend_from_slice(format!("line {} of {}\n", i % 97, i / 13).as_bytes());
        }
        v
    }

    #[test]
    fn fills_at_most_the_target_and_round_trips() {
        let src = sample();
        for level in [Level::Fast, Level::High(1), Level::High(9), Level::High(12)] {
            let mut c = Compressor::new(level);
            let mut dst = vec![0u8; 4096];
            let (used, written) = c.compress_dest_size(&src, &mut dst);
            assert!(written <= 4096 && written > 3000, "{level:?}: {written}");
            assert!(used > 4096, "{level:?}: only {used} bytes fitted");
            let mut back = vec![0u8; used];
            assert_eq!(decompress(&dst[..written], &mut back), Some(used));
            assert_eq!(back, src[..used]);
        }
    }

    #[test]
    fn incompressible_input_consumes_less_than_the_target() {
        // xorshift noise: LZ4 can only store it as literals, with a little overhead.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let src: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut c = Compressor::new(Level::High(9));
        let mut dst = vec![0u8; 4096];
        let (used, written) = c.compress_dest_size(&src, &mut dst);
        assert!(used < 4096 && written <= 4096);
    }
}
