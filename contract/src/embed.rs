//! The embed area of the `iso` output: a fixed-size file on the ISO 9660 side,
//! [`CONFIG_FILE`], into which `rke2-image iso customize` writes a node configuration without
//! rebuilding the ISO (as coreos-installer's `iso ignition embed` does); the agent's `medium`
//! source reads it back on a live boot. Both sides use this module so the layout cannot drift.
//!
//! Layout ([`AREA_BYTES`] bytes, little-endian):
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 8    | magic `RKE2CFG\0`                                      |
//! | 8      | 4    | version, [`VERSION`]                                   |
//! | 12     | 4    | reserved, 0                                            |
//! | 16     | 8    | payload length in bytes (0: the area is empty)         |
//! | 24     | 32   | SHA-256 of the payload                                 |
//! | 56     | 456  | reserved, 0                                            |
//! | 512    | ...  | the payload (the configuration file's bytes), then 0s  |
//!
//! Everything after the payload is zero, so an area's bytes depend only on its payload: the
//! same configuration embedded twice (or into an area that held another) gives the same ISO.

use sha2::{Digest, Sha256};

/// Where the area is on the ISO 9660 side (an 8.3 name, as [`crate::cmdline::ISO_ROOT_FILE`]).
pub const CONFIG_FILE: &str = "/rke2/config.img";
/// The area's size. 1 MiB: a native cluster file of a few thousand nodes (about 200 bytes a
/// node) or an Ignition config with small inline files fits, and it costs 0.1% of a ~1 GiB ISO.
/// The agent's own limit on any configuration (4 MiB) stays larger, so nothing that fits here
/// is refused by the agent.
pub const AREA_BYTES: usize = 1 << 20;
/// The header's size; the payload follows it.
pub const HEADER_BYTES: usize = 512;
/// The largest payload an area of [`AREA_BYTES`] holds.
pub const MAX_PAYLOAD: usize = AREA_BYTES - HEADER_BYTES;
pub const MAGIC: [u8; 8] = *b"RKE2CFG\0";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmbedError {
    #[error("the configuration is {len} bytes; the embed area holds at most {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the embed area is {len} bytes, shorter than its {HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("the embed area has no RKE2CFG header (not written by rke2-image, or overwritten)")]
    BadMagic,
    #[error("the embed area has format version {0}; this program reads version {VERSION}")]
    Version(u32),
    #[error("the embed area says its payload is {len} bytes, more than its {room} bytes of room")]
    Length { len: u64, room: usize },
    #[error("the embedded configuration's SHA-256 does not match its header (a damaged medium?)")]
    Checksum,
}

/// The whole area (exactly `area_len` bytes) holding `payload`; an empty payload is the
/// "empty" area the builder writes.
pub fn encode(payload: &[u8], area_len: usize) -> Result<Vec<u8>, EmbedError> {
    let room = area_len.saturating_sub(HEADER_BYTES);
    if payload.len() > room {
        return Err(EmbedError::TooLarge {
            len: payload.len(),
            max: room,
        });
    }
    let mut a = vec![0u8; area_len];
    a[0..8].copy_from_slice(&MAGIC);
    a[8..12].copy_from_slice(&VERSION.to_le_bytes());
    a[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    a[24..56].copy_from_slice(&Sha256::digest(payload));
    a[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(payload);
    Ok(a)
}

/// The empty area of [`AREA_BYTES`].
pub fn empty() -> Vec<u8> {
    let mut a = vec![0u8; AREA_BYTES];
    a[0..8].copy_from_slice(&MAGIC);
    a[8..12].copy_from_slice(&VERSION.to_le_bytes());
    a[24..56].copy_from_slice(&Sha256::digest(b""));
    a
}

/// The payload length the header at the start of `header` announces, checked against an area
/// of `area_len` bytes; 0 means empty. Lets a reader fetch the header alone first.
pub fn payload_len(header: &[u8], area_len: usize) -> Result<usize, EmbedError> {
    if header.len() < HEADER_BYTES || area_len < HEADER_BYTES {
        return Err(EmbedError::Short {
            len: header.len().min(area_len),
        });
    }
    if header[0..8] != MAGIC {
        return Err(EmbedError::BadMagic);
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(EmbedError::Version(version));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(l);
    let room = area_len - HEADER_BYTES;
    if len > room as u64 {
        return Err(EmbedError::Length { len, room });
    }
    Ok(len as usize)
}

/// The payload of an area (`None`: empty), its checksum verified. `area` may be the header and
/// payload alone (at least `HEADER_BYTES + length`) when `area_len` gives the area's size.
pub fn decode(area: &[u8], area_len: usize) -> Result<Option<Vec<u8>>, EmbedError> {
    let len = payload_len(area, area_len)?;
    if area.len() < HEADER_BYTES + len {
        return Err(EmbedError::Short { len: area.len() });
    }
    let payload = &area[HEADER_BYTES..HEADER_BYTES + len];
    if Sha256::digest(payload).as_slice() != &area[24..56] {
        return Err(EmbedError::Checksum);
    }
    Ok((len > 0).then(|| payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_empty() {
        let e = empty();
        assert_eq!(e.len(), AREA_BYTES);
        assert_eq!(decode(&e, AREA_BYTES), Ok(None));
        assert_eq!(encode(b"", AREA_BYTES).unwrap(), e);
        let a = encode(b"nodes: []\n", AREA_BYTES).unwrap();
        assert_eq!(a.len(), AREA_BYTES);
        assert_eq!(decode(&a, AREA_BYTES), Ok(Some(b"nodes: []\n".to_vec())));
        // Header and payload alone are enough to decode.
        assert_eq!(
            decode(&a[..HEADER_BYTES + 10], AREA_BYTES),
            Ok(Some(b"nodes: []\n".to_vec()))
        );
        // The largest payload fits; one byte more is refused with both sizes.
        let big = vec![b'x'; MAX_PAYLOAD];
        assert_eq!(
            decode(&encode(&big, AREA_BYTES).unwrap(), AREA_BYTES),
            Ok(Some(big))
        );
        assert_eq!(
            encode(&vec![0; MAX_PAYLOAD + 1], AREA_BYTES),
            Err(EmbedError::TooLarge {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
    }

    #[test]
    fn damage_is_named() {
        let good = encode(b"a: 1\n", AREA_BYTES).unwrap();
        let mut a = good.clone();
        a[HEADER_BYTES] ^= 1;
        assert_eq!(decode(&a, AREA_BYTES), Err(EmbedError::Checksum));
        assert_eq!(
            decode(&vec![0; AREA_BYTES], AREA_BYTES),
            Err(EmbedError::BadMagic)
        );
        let mut a = good.clone();
        a[8] = 2;
        assert_eq!(decode(&a, AREA_BYTES), Err(EmbedError::Version(2)));
        let mut a = good.clone();
        a[16..24].copy_from_slice(&(AREA_BYTES as u64).to_le_bytes());
        assert!(matches!(
            decode(&a, AREA_BYTES),
            Err(EmbedError::Length { .. })
        ));
        assert!(matches!(
            decode(&good[..100], AREA_BYTES),
            Err(EmbedError::Short { .. })
        ));
        // Truncated inside the payload.
        assert!(matches!(
            decode(&good[..HEADER_BYTES + 2], AREA_BYTES),
            Err(EmbedError::Short { .. })
        ));
    }
}
