//! dm-verity superblock parsing and the device-mapper table line.
//!
//! Local until `contract::verity` lands; same format (`veritysetup format`, version 1).

/// Parameters read from a verity superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
    pub algorithm: String,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Parses the 512-byte superblock at the start of the hash device.
pub fn parse_superblock(b: &[u8]) -> Result<Params, String> {
    if b.len() < 512 || &b[0..8] != b"verity\0\0" {
        return Err("no dm-verity superblock (magic \"verity\" missing)".into());
    }
    let version = le32(b, 8);
    let hash_type = le32(b, 12);
    if version != 1 || hash_type != 1 {
        return Err(format!(
            "unsupported verity superblock version {version} hash type {hash_type}"
        ));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    let alg = &b[32..64];
    let algorithm = String::from_utf8_lossy(&alg[..alg.iter().position(|&c| c == 0).unwrap_or(32)])
        .into_owned();
    let data_block_size = le32(b, 64);
    let hash_block_size = le32(b, 68);
    let mut db = [0u8; 8];
    db.copy_from_slice(&b[72..80]);
    let data_blocks = u64::from_le_bytes(db);
    let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
    if salt_size > 256 {
        return Err(format!("verity salt size {salt_size} exceeds 256"));
    }
    let ok_size = |s: u32| (512..=1 << 20).contains(&s) && s.is_power_of_two();
    if !ok_size(data_block_size) || !ok_size(hash_block_size) {
        return Err(format!(
            "bad verity block sizes {data_block_size}/{hash_block_size}"
        ));
    }
    if algorithm != "sha256" {
        return Err(format!("verity hash algorithm {algorithm:?} is not sha256"));
    }
    Ok(Params {
        data_block_size,
        hash_block_size,
        data_blocks,
        salt: b[88..88 + salt_size].to_vec(),
        uuid,
        algorithm,
    })
}

/// The `verity` target line for `DM_TABLE_LOAD` (one target covering the data device); the
/// hash tree starts at hash block 1, right after the superblock. `panic_on_corruption`
/// is deliberately not used: the kernel's default (`EIO` on a bad block) makes the read fail
/// and `rke2-init` report it, while `restart_on_corruption` would loop.
pub fn table(p: &Params, data_dev: &str, hash_dev: &str, root_hash: &str) -> (u64, String) {
    let sectors = p.data_blocks * u64::from(p.data_block_size) / 512;
    let salt = if p.salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(&p.salt)
    };
    let line = format!(
        "1 {data_dev} {hash_dev} {} {} {} 1 {} {root_hash} {salt}",
        p.data_block_size, p.hash_block_size, p.data_blocks, p.algorithm
    );
    (sectors, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(parse_superblock(&[0u8; 512]).unwrap_err().contains("magic"));
        assert!(parse_superblock(b"verity").is_err());
    }

    /// Oracle: a superblock written by `veritysetup format`, and the table `veritysetup`
    /// itself reports for it (`veritysetup dump`).
    #[test]
    fn reads_veritysetup_superblock() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let hash = dir.path().join("hash");
        std::fs::write(&data, vec![7u8; 4096 * 10]).unwrap();
        let out = std::process::Command::new("veritysetup")
            .args(["format", "--salt", "0102ab"])
            .arg(&data)
            .arg(&hash)
            .output()
            .expect("veritysetup is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let root = text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim();
        let sb = std::fs::read(&hash).unwrap();
        let p = parse_superblock(&sb).unwrap();
        assert_eq!(p.data_blocks, 10);
        assert_eq!(p.salt, [1, 2, 0xab]);
        let (sectors, line) = table(&p, "8:2", "8:3", root);
        assert_eq!(sectors, 80);
        assert_eq!(
            line,
            format!("1 8:2 8:3 4096 4096 10 1 sha256 {root} 0102ab")
        );
        let uuid = text
            .lines()
            .find_map(|l| l.strip_prefix("UUID:"))
            .unwrap()
            .trim();
        assert_eq!(uuid.replace('-', ""), hex::encode(p.uuid));
    }
}
