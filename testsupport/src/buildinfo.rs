//! Go build information (`.go.buildinfo`, Go 1.18+ inline-string form), as written by the Go
//! linker and read by `debug/buildinfo`:
//!
//! ```text
//! 0   "\xff Go buildinf:"   14 bytes
//! 14  pointer size (8)
//! 15  flags: bit 1 = strings inline (always set since Go 1.18), bit 0 = big endian
//! 32  uvarint length + Go version, uvarint length + module info
//! ```
//! The module info is wrapped in 16-byte sentinels and holds `path`, `mod`, `dep` and
//! `build\tKEY=VALUE` lines.

pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Size the stand-in reserves for its section, so a fixture can rewrite it in place.
pub const RESERVED: usize = 4096;
const INFO_START: [u8; 16] = [
    0x30, 0x77, 0xaf, 0x0c, 0x92, 0x74, 0x08, 0x02, 0x41, 0xe1, 0xc1, 0x07, 0xe6, 0xd6, 0x18, 0xe6,
];
const INFO_END: [u8; 16] = [
    0xf9, 0x32, 0x43, 0x31, 0x86, 0x18, 0x20, 0x72, 0x00, 0x82, 0x42, 0x10, 0x41, 0x16, 0xd8, 0xf2,
];

/// The settings a real rke2 release build records (`go version -m rke2`).
pub fn rke2_settings(version: &str, boringcrypto: bool) -> Vec<(String, String)> {
    let mut s = vec![
        ("-buildmode".to_string(), "exe".to_string()),
        ("-compiler".into(), "gc".into()),
        (
            "-ldflags".into(),
            format!("\"-X github.com/k3s-io/k3s/pkg/version.Program=rke2 -X github.com/k3s-io/k3s/pkg/version.Version={version} -w -s\""),
        ),
        ("CGO_ENABLED".into(), "1".into()),
        ("GOARCH".into(), "amd64".into()),
    ];
    if boringcrypto {
        s.push(("GOEXPERIMENT".into(), "boringcrypto".into()));
    }
    s.push(("GOOS".into(), "linux".into()));
    s.push(("GOAMD64".into(), "v1".into()));
    s
}

fn uvarint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Encodes a build-info blob padded to [`RESERVED`] bytes.
pub fn encode(go_version: &str, settings: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RESERVED);
    out.extend_from_slice(MAGIC);
    out.push(8);
    out.push(2);
    out.resize(32, 0);
    uvarint(go_version.len(), &mut out);
    out.extend_from_slice(go_version.as_bytes());
    let mut info = Vec::new();
    info.extend_from_slice(&INFO_START);
    info.extend_from_slice(
        b"path\tgithub.com/rancher/rke2\nmod\tgithub.com/rancher/rke2\t(devel)\t\n",
    );
    for (k, v) in settings {
        info.extend_from_slice(format!("build\t{k}={v}\n").as_bytes());
    }
    info.extend_from_slice(&INFO_END);
    uvarint(info.len(), &mut out);
    out.extend_from_slice(&info);
    assert!(
        out.len() <= RESERVED,
        "build info larger than the reserved section"
    );
    out.resize(RESERVED, 0);
    out
}

/// Offset and size of the named section in a little-endian ELF64 file.
pub fn elf_section(file: &[u8], name: &str) -> Option<(usize, usize)> {
    let u16at = |o: usize| Some(u16::from_le_bytes(file.get(o..o + 2)?.try_into().ok()?));
    let u32at = |o: usize| Some(u32::from_le_bytes(file.get(o..o + 4)?.try_into().ok()?));
    let u64at = |o: usize| Some(u64::from_le_bytes(file.get(o..o + 8)?.try_into().ok()?));
    if file.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64at(0x28)? as usize;
    let shentsize = u16at(0x3a)? as usize;
    let shnum = u16at(0x3c)? as usize;
    let shstrndx = u16at(0x3e)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64at(sh(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let name_off = u32at(sh(i))? as usize;
        let start = strtab + name_off;
        let end = start + file.get(start..)?.iter().position(|&b| b == 0)?;
        if &file[start..end] == name.as_bytes() {
            let off = u64at(sh(i) + 0x18)? as usize;
            let size = u64at(sh(i) + 0x20)? as usize;
            return Some((off, size));
        }
    }
    None
}

fn read_uvarint(b: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0usize;
    for (i, &x) in b.iter().enumerate().take(10) {
        n |= ((x & 0x7f) as usize) << (7 * i);
        if x < 0x80 {
            return Some((n, i + 1));
        }
    }
    None
}

/// Go version and module info text of a blob written by [`encode`] (for the stand-in itself).
pub fn decode(blob: &[u8]) -> Option<(String, String)> {
    if blob.get(..14)? != MAGIC || blob.get(15)? & 2 == 0 {
        return None;
    }
    let (vlen, n) = read_uvarint(blob.get(32..)?)?;
    let vstart = 32 + n;
    let version = String::from_utf8_lossy(blob.get(vstart..vstart + vlen)?).into_owned();
    let (mlen, n) = read_uvarint(blob.get(vstart + vlen..)?)?;
    let mstart = vstart + vlen + n;
    let info = blob.get(mstart..mstart + mlen)?;
    let info = info.get(16..info.len().checked_sub(16)?)?;
    Some((version, String::from_utf8_lossy(info).into_owned()))
}

/// Replaces the `.go.buildinfo` section of an ELF file (which must be at least [`RESERVED`]
/// bytes, as the stand-in's is) with `blob`.
pub fn rewrite(elf: &mut [u8], blob: &[u8]) -> anyhow::Result<()> {
    let (off, size) = elf_section(elf, ".go.buildinfo")
        .ok_or_else(|| anyhow::anyhow!("no .go.buildinfo section"))?;
    anyhow::ensure!(
        blob.len() <= size,
        "build info of {} bytes does not fit the {size}-byte section",
        blob.len()
    );
    elf[off..off + blob.len()].copy_from_slice(blob);
    Ok(())
}
