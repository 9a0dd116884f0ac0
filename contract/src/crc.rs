//! Table-driven reflected CRC-32 in the two variants our formats use: IEEE 802.3 (GPT headers
//! and entry arrays) and Castagnoli (the EROFS superblock checksum).

const fn reflected_table(poly: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static IEEE: [u32; 256] = reflected_table(0xEDB8_8320);
static CASTAGNOLI: [u32; 256] = reflected_table(0x82F6_3B78);

fn update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 (IEEE 802.3), seed and final inversion included.
pub fn crc32(data: &[u8]) -> u32 {
    !update(&IEEE, !0, data)
}

/// CRC-32C without the final inversion, continuing from `crc`, as the kernel's `crc32c()`
/// (and so the EROFS superblock checksum) computes it.
pub fn crc32c_raw(crc: u32, data: &[u8]) -> u32 {
    update(&CASTAGNOLI, crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // The standard check values of both CRCs over "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }
}
