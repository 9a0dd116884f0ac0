//! EROFS LZ4 file compression, as Linux 6.1 reads it and mkfs.erofs 1.5 writes it by default.
//!
//! - 4 KiB logical clusters and 4 KiB physical clusters (no big pclusters), layout
//!   `EROFS_INODE_FLAT_COMPRESSION` (3) with compact indexes (`Z_EROFS_ADVISE_COMPACTED_2B`),
//!   algorithm LZ4 for both heads, the `LZ4_0PADDING` feature (compressed bytes end at the end
//!   of their block, zeros before them).
//! - No tail packing and no fragments: the base's 6.1 kernel only has them as experimental.
//! - mkfs.erofs's rules (lib/compress.c, `vle_compress_one`): input is taken through the same
//!   1.8 MiB window; a pcluster whose input is not larger than its rounded-up compressed size
//!   is stored as PLAIN (one raw block); the last <= 4 KiB of a file are always PLAIN; a file
//!   whose compressed blocks plus full indexes do not make it smaller is stored flat (the
//!   caller does that).

use std::io::{self, Read};

use crate::lz4::Compressor;

const BLK: usize = 4096;
/// mkfs.erofs's `EROFS_CONFIG_COMPR_MAX_SZ`; its input window is twice this.
const WINDOW: usize = 900 * 1024;
/// `Z_EROFS_LEGACY_MAP_HEADER_SIZE`: the map header plus padding, counted by mkfs.erofs when
/// it decides whether compression saves space.
const LEGACY_HEADER: u64 = 16;
const LEGACY_INDEX: u64 = 8;

pub const TYPE_PLAIN: u8 = 0;
pub const TYPE_HEAD: u8 = 1;
pub const TYPE_NONHEAD: u8 = 2;
/// `Z_EROFS_VLE_DI_D0_CBLKCNT`.
const D0_CBLKCNT: u16 = 1 << 11;
/// `Z_EROFS_ADVISE_COMPACTED_2B`.
const ADVISE_COMPACTED_2B: u16 = 0x1;
/// Size of `struct z_erofs_map_header`.
pub const MAP_HEADER: usize = 8;

/// One full (legacy) lcluster index; block addresses are relative to the file's first block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    pub kind: u8,
    pub clusterofs: u16,
    /// HEAD/PLAIN: relative block address; NONHEAD: delta[0] | delta[1] << 16.
    pub u: u32,
}

/// A compressed file: its physical blocks (in order) and its lcluster indexes.
#[derive(Debug, Clone, Default)]
pub struct Compressed {
    pub blocks: u32,
    pub indexes: Vec<Index>,
}

/// Where compressed blocks go, in order.
pub trait BlockSink {
    fn block(&mut self, data: &[u8; BLK]) -> io::Result<()>;
}

impl BlockSink for Vec<u8> {
    fn block(&mut self, data: &[u8; BLK]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

struct Ctx<'a> {
    queue: Vec<u8>,
    head: usize,
    tail: usize,
    clusterofs: usize,
    out: Compressed,
    sink: &'a mut dyn BlockSink,
    dst: Vec<u8>,
    block: Box<[u8; BLK]>,
}

impl Ctx<'_> {
    /// `vle_write_indexes`.
    fn write_indexes(&mut self, mut count: usize, raw: bool, blkaddr: u32) {
        let mut clusterofs = self.clusterofs;
        let mut d0: u16 = 0;
        let mut d1 = ((clusterofs + count) / BLK) as u16;
        let head = if raw { TYPE_PLAIN } else { TYPE_HEAD };
        if d1 == 0 {
            self.out.indexes.push(Index {
                kind: head,
                clusterofs: clusterofs as u16,
                u: blkaddr,
            });
            self.clusterofs = 0;
            return;
        }
        loop {
            let index = if d0 > 0 {
                // Only big pclusters reach D0_CBLKCNT; clamp as mkfs.erofs does.
                let d = if d0 >= D0_CBLKCNT { D0_CBLKCNT - 1 } else { d0 };
                Index {
                    kind: TYPE_NONHEAD,
                    clusterofs: clusterofs as u16,
                    u: u32::from(d) | u32::from(d1) << 16,
                }
            } else {
                Index {
                    kind: head,
                    clusterofs: clusterofs as u16,
                    u: blkaddr,
                }
            };
            self.out.indexes.push(index);
            count -= BLK - clusterofs;
            clusterofs = 0;
            d0 += 1;
            d1 = d1.wrapping_sub(1);
            if clusterofs + count < BLK {
                break;
            }
        }
        self.clusterofs = clusterofs + count;
    }

    /// `vle_compress_one`.
    fn compress_one(&mut self, c: &mut Compressor, last: bool) -> io::Result<()> {
        let mut len = self.tail - self.head;
        while len > 0 {
            let mut raw = true;
            let mut count = 0;
            if len > BLK {
                let src = &self.queue[self.head..self.tail];
                let (used, written) = c.compress_dest_size(src, &mut self.dst[..BLK]);
                // erofs_compress_destsize: the output counts as whole blocks unless this is the
                // last piece of the file and all of it fitted; it must save at least that much.
                let whole = !last || written >= BLK || used != len;
                let size = if whole {
                    written.next_multiple_of(BLK)
                } else {
                    written
                };
                if written > 0 && used > size {
                    raw = false;
                    count = used;
                    // LZ4_0PADDING: zeros first, the compressed bytes end with the block.
                    let pad = BLK - written;
                    self.block[..pad].fill(0);
                    self.block[pad..].copy_from_slice(&self.dst[..written]);
                }
            } else if !last {
                break;
            }
            if raw {
                // write_uncompressed_extent: one raw block (no clusterofs reset with 0-padding).
                count = len.min(BLK);
                self.block[..count].copy_from_slice(&self.queue[self.head..self.head + count]);
                self.block[count..].fill(0);
            }
            self.sink.block(&self.block)?;
            let blkaddr = self.out.blocks;
            self.head += count;
            self.write_indexes(count, raw, blkaddr);
            self.out.blocks += 1;
            len -= count;
            if !last && self.head >= WINDOW {
                let aligned = self.head / BLK * BLK;
                self.queue.copy_within(aligned..self.tail, 0);
                self.head -= aligned;
                self.tail = self.head + len;
                break;
            }
        }
        Ok(())
    }
}

/// Compresses `size` bytes from `input`, sending each physical block to `sink`. Returns None
/// when compression does not make the file smaller (mkfs.erofs's rule, full index size
/// counted): the caller stores it flat and drops what the sink received.
pub fn compress(
    c: &mut Compressor,
    input: &mut dyn Read,
    size: u64,
    sink: &mut dyn BlockSink,
) -> io::Result<Option<Compressed>> {
    let mut ctx = Ctx {
        // mkfs.erofs reads min(remaining, window) at a time: a file that fits the window is
        // read whole either way, so a smaller queue for it changes nothing but the memset.
        queue: vec![0u8; usize::try_from(size).map_or(2 * WINDOW, |s| s.min(2 * WINDOW))],
        head: 0,
        tail: 0,
        clusterofs: 0,
        out: Compressed::default(),
        sink,
        dst: vec![0u8; BLK],
        block: Box::new([0u8; BLK]),
    };
    let mut remaining = size;
    while remaining > 0 {
        let n = remaining.min((ctx.queue.len() - ctx.tail) as u64) as usize;
        input.read_exact(&mut ctx.queue[ctx.tail..ctx.tail + n])?;
        remaining -= n as u64;
        ctx.tail += n;
        ctx.compress_one(c, remaining == 0)?;
    }
    // vle_write_indexes_final: the lcluster holding the end of the file.
    if ctx.clusterofs != 0 {
        ctx.out.indexes.push(Index {
            kind: TYPE_PLAIN,
            clusterofs: ctx.clusterofs as u16,
            u: 0,
        });
    }
    let out = ctx.out;
    let legacy = LEGACY_HEADER + LEGACY_INDEX * out.indexes.len() as u64;
    if u64::from(out.blocks) * BLK as u64 + legacy >= size {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Number of lclusters of a file (the kernel's `totalidx`).
pub fn lclusters(size: u64) -> usize {
    size.div_ceil(BLK as u64) as usize
}

/// (4-byte entries at the start, 2-byte entries, 4-byte entries at the end), as both
/// `z_erofs_convert_to_compacted_format` and the kernel's `compacted_load_cluster_from_disk`
/// split them; `mpos` is where the indexes start relative to the inode (a multiple of 8).
fn compact_split(total: usize, mpos: usize) -> (usize, usize, usize) {
    let mut initial = (32 - mpos % 32) / 4;
    if initial == 32 / 4 {
        initial = 0;
    }
    if initial > total {
        return (0, 0, total);
    }
    let two = (total - initial) / 16 * 16;
    (initial, two, total - initial - two)
}

/// Byte length of the map header plus compact indexes for a file of `size` bytes whose inode
/// core and xattrs take `ibody` bytes.
pub fn extent_len(size: u64, ibody: usize) -> usize {
    let mpos = ibody.next_multiple_of(8) + MAP_HEADER;
    let (initial, two, end) = compact_split(lclusters(size), mpos);
    MAP_HEADER + initial * 4 + two * 2 + end.div_ceil(2) * 8
}

/// `write_compacted_indexes` for one pack of `cv.len()` entries of `unit` bytes each.
fn write_pack(
    out: &mut Vec<u8>,
    cv: &[Index],
    blkaddr_ret: &mut u32,
    unit: usize,
    dummy_head: &mut bool,
) {
    let vcnt = cv.len();
    let encodebits = (vcnt * unit * 8 - 32) / vcnt;
    let start = out.len();
    out.resize(start + vcnt * unit, 0);
    let pack = &mut out[start..];
    let mut blkaddr = *blkaddr_ret;
    let mut pos = 0usize;
    for (i, e) in cv.iter().enumerate() {
        let offset: u32 = if e.kind == TYPE_NONHEAD {
            let d0 = (e.u & 0xffff) as u16;
            if d0 & D0_CBLKCNT != 0 {
                // Only with big pclusters, which we do not write.
                blkaddr = blkaddr.wrapping_add(u32::from(d0 & !D0_CBLKCNT));
                *dummy_head = false;
                u32::from(d0)
            } else if i + 1 == vcnt {
                e.u >> 16
            } else {
                u32::from(d0)
            }
        } else {
            if *dummy_head {
                blkaddr = blkaddr.wrapping_add(1);
            }
            *dummy_head = true;
            u32::from(e.clusterofs)
        };
        let v = (u32::from(e.kind) << 12) | offset;
        let rem = pos & 7;
        let b = pos / 8;
        let keep = pack[b] & ((1u8 << rem) - 1);
        pack[b] = (v << rem) as u8 | keep;
        pack[b + 1] = (v >> (8 - rem)) as u8;
        if b + 2 < pack.len() {
            pack[b + 2] = (v >> (16 - rem)) as u8;
        }
        pos += encodebits;
    }
    let n = pack.len();
    pack[n - 4..].copy_from_slice(&blkaddr_ret.to_le_bytes());
    *blkaddr_ret = blkaddr;
}

/// The map header and compact indexes of a compressed file whose first block is `start` and
/// whose inode core and xattrs take `ibody` bytes.
pub fn extent_bytes(z: &Compressed, size: u64, start: u32, ibody: usize) -> Vec<u8> {
    let mpos = ibody.next_multiple_of(8) + MAP_HEADER;
    let total = z.indexes.len();
    debug_assert_eq!(total, lclusters(size));
    let (mut initial, mut two, mut end) = compact_split(total, mpos);
    let mut out = Vec::with_capacity(extent_len(size, ibody));
    // struct z_erofs_map_header: h_reserved1/h_idata_size 0, h_advise, h_algorithmtype 0
    // (LZ4 for both heads), h_clusterbits 0 (4 KiB lclusters).
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&ADVISE_COMPACTED_2B.to_le_bytes());
    out.extend_from_slice(&[0u8, 0u8]);
    let absolute = |e: &Index| {
        let mut e = *e;
        if e.kind != TYPE_NONHEAD {
            e.u = e.u.wrapping_add(start);
        }
        e
    };
    let idx: Vec<Index> = z.indexes.iter().map(absolute).collect();
    let mut at = 0usize;
    // Without big pclusters the block address is bumped when entering each HEAD.
    let mut blkaddr = start.wrapping_sub(1);
    let mut dummy_head = true;
    while initial > 0 {
        write_pack(&mut out, &idx[at..at + 2], &mut blkaddr, 4, &mut dummy_head);
        at += 2;
        initial -= 2;
    }
    while two > 0 {
        write_pack(
            &mut out,
            &idx[at..at + 16],
            &mut blkaddr,
            2,
            &mut dummy_head,
        );
        at += 16;
        two -= 16;
    }
    while end > 1 {
        write_pack(&mut out, &idx[at..at + 2], &mut blkaddr, 4, &mut dummy_head);
        at += 2;
        end -= 2;
    }
    if end == 1 {
        let last = [
            idx[at],
            Index {
                kind: TYPE_PLAIN,
                clusterofs: 0,
                u: 0,
            },
        ];
        write_pack(&mut out, &last, &mut blkaddr, 4, &mut dummy_head);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lz4::{self, Level};

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0u32;
        while v.len() < n {
            v.extend_from_slice(format!("entry {} of group {}\n", i % 1013, i / 7).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    /// Decodes with the full indexes the way the kernel walks them (z_erofs_do_map_blocks),
    /// then LZ4-decompresses each pcluster: the file must come back.
    fn decode(z: &Compressed, blocks: &[u8], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        // Extents: (logical start, pblk, raw).
        let mut extents: Vec<(usize, u32, bool)> = Vec::new();
        for (lcn, e) in z.indexes.iter().enumerate() {
            if e.kind != TYPE_NONHEAD {
                let start = lcn * BLK + e.clusterofs as usize;
                if start < size {
                    extents.push((start, e.u, e.kind == TYPE_PLAIN));
                }
            }
        }
        for (k, &(start, pblk, raw)) in extents.iter().enumerate() {
            let end = extents.get(k + 1).map_or(size, |e| e.0);
            let blk = &blocks[pblk as usize * BLK..(pblk as usize + 1) * BLK];
            if raw {
                out[start..end].copy_from_slice(&blk[..end - start]);
            } else {
                let skip = blk.iter().position(|&b| b != 0).unwrap();
                let n = lz4::decompress(&blk[skip..], &mut out[start..end]).unwrap();
                assert_eq!(n, end - start);
            }
        }
        out
    }

    #[test]
    fn compressed_files_decode_back() {
        for size in [20_000, 100_000, 2_000_000, 3 * WINDOW + 12_345] {
            let data = text(size);
            let mut c = Compressor::new(Level::High(9));
            let mut blocks = Vec::new();
            let z = compress(&mut c, &mut &data[..], size as u64, &mut blocks)
                .unwrap()
                .unwrap();
            assert_eq!(z.indexes.len(), lclusters(size as u64), "{size}");
            assert_eq!(blocks.len(), z.blocks as usize * BLK);
            assert!(decode(&z, &blocks, size) == data, "{size}");
        }
    }

    #[test]
    fn one_block_and_incompressible_files_stay_flat() {
        let mut c = Compressor::new(Level::Fast);
        // One block, or one block and a byte (1 block + 16 + 2 * 8 index bytes >= 4097).
        for n in [4096, 4097] {
            let small = text(n);
            assert!(compress(&mut c, &mut &small[..], n as u64, &mut Vec::new())
                .unwrap()
                .is_none());
        }
        let mut x = 1u64;
        let noise: Vec<u8> = (0..50_000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        assert!(compress(&mut c, &mut &noise[..], 50_000, &mut Vec::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn compact_split_matches_the_kernel() {
        // ebase % 32 == 8 + 8: 4 four-byte entries first, then 16-entry 2-byte packs.
        assert_eq!(compact_split(40, 16), (4, 32, 4));
        assert_eq!(compact_split(3, 16), (0, 0, 3));
        assert_eq!(compact_split(4, 16), (4, 0, 0));
        assert_eq!(compact_split(20, 32), (0, 16, 4));
        assert_eq!(extent_len(40 * 4096, 8), 8 + 16 + 64 + 16);
    }

    #[test]
    fn compact_pack_encodes_14_bit_entries_and_base() {
        // One 2-byte pack: HEAD at lcn 0 (block 7), 15 NONHEADs; the base is 7 - 1.
        let mut cv = vec![Index {
            kind: TYPE_HEAD,
            clusterofs: 0,
            u: 7,
        }];
        for d in 1..16u32 {
            cv.push(Index {
                kind: TYPE_NONHEAD,
                clusterofs: 0,
                u: d | (20 - d) << 16,
            });
        }
        let mut out = Vec::new();
        let mut base = 6u32;
        let mut dummy = true;
        write_pack(&mut out, &cv, &mut base, 2, &mut dummy);
        assert_eq!(out.len(), 32);
        assert_eq!(u32::from_le_bytes(out[28..32].try_into().unwrap()), 6);
        let get = |i: usize| {
            let pos = 14 * i;
            let v = u32::from_le_bytes(out[pos / 8..pos / 8 + 4].try_into().unwrap()) >> (pos & 7);
            (v & 0xfff, (v >> 12) & 3)
        };
        assert_eq!(get(0), (0, 1));
        assert_eq!(get(3), (3, 2));
        // The last entry of a pack stores delta[1].
        assert_eq!(get(15), (5, 2));
    }
}
