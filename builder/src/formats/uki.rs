//! Unified kernel images (UAPI.5 "Type #2" boot entries): systemd's EFI stub with the kernel,
//! initrd, command line and os-release appended as PE sections. Written here rather than with
//! `objcopy`/`ukify` so the output depends only on its inputs (no tool versions, no host paths).
//!
//! The base's stub is systemd 252, which reads `.linux`, `.osrel`, `.cmdline`, `.initrd`,
//! `.splash`, `.dtb`, `.pcrsig` and `.pcrpkey` (`.uname` and `.sbat` merging came later). We
//! add the four we have content for; the stub's own sections (including its `.sbat`) stay.
//! Under Secure Boot the 252 stub ignores a command line passed by the loader and uses the
//! signed `.cmdline`, which is why the root hash lives there.

use std::fmt;

/// The stub inside the base (package systemd-boot-efi).
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Sections we add, in the order they are laid out (the kernel last, as ukify does: the small
/// sections then sit in the first pages of the image).
pub const OSREL: &str = ".osrel";
pub const CMDLINE: &str = ".cmdline";
pub const INITRD: &str = ".initrd";
pub const LINUX: &str = ".linux";

/// New sections start on page boundaries in memory (misaligned UKI sections stalled OVMF under
/// Secure Boot elsewhere). In the file they follow each other at the file alignment with no
/// gaps: Authenticode hashes the sections in file order, and implementations disagree about
/// bytes between sections (sbsign warns "gaps in the section table may result in different
/// checksums").
const PAGE: u64 = 4096;
/// Firmware has been reported to refuse PE files with more than this many sections.
const MAX_SECTIONS: usize = 25;
const SECTION_HEADER: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("{what}: not a PE32+ image ({why})")]
    Format { what: String, why: String },
    #[error("{what}: no room for {need} more section headers before the first section; the stub is not one systemd-boot-efi ships")]
    NoRoom { what: String, need: usize },
    #[error("{what}: {count} sections would exceed the {MAX_SECTIONS} some firmware accepts")]
    TooManySections { what: String, count: usize },
    #[error("{what}: already has a {name} section; use the plain stub")]
    Duplicate { what: String, name: String },
    #[error("{what}: the UKI would be {size} bytes; EFI files of 2 GiB or more do not load")]
    TooLarge { what: String, size: u64 },
}

fn format_err(what: &str, why: impl fmt::Display) -> PeError {
    PeError::Format {
        what: what.to_string(),
        why: why.to_string(),
    }
}

/// One section header, as read from a PE file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

/// The header fields a UKI build touches.
struct Layout {
    /// Offset of the optional header.
    opt: usize,
    /// Offset of the section table.
    table: usize,
    sections: Vec<Section>,
    file_align: u32,
    section_align: u32,
    size_of_headers: u32,
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

fn put_u16(d: &mut [u8], off: usize, v: u16) {
    d[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

// Offsets inside the PE32+ optional header (PE/COFF specification, "Optional Header").
const OPT_MAGIC_PE32PLUS: u16 = 0x20b;
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_DATA_DIRECTORIES: usize = 112;
const DIR_CERTIFICATE: usize = 4;
const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x40;
const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;

fn parse(d: &[u8], what: &str) -> Result<Layout, PeError> {
    let bad = |why: &str| format_err(what, why);
    if d.get(0..2) != Some(b"MZ") {
        return Err(bad("no MZ header"));
    }
    let pe = u32_at(d, 0x3c).ok_or_else(|| bad("truncated DOS header"))? as usize;
    if d.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let count = u16_at(d, pe + 6).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let opt_size = u16_at(d, pe + 20).ok_or_else(|| bad("truncated COFF header"))? as usize;
    let opt = pe + 24;
    if u16_at(d, opt) != Some(OPT_MAGIC_PE32PLUS) {
        return Err(bad("optional header is not PE32+"));
    }
    if opt_size < OPT_DATA_DIRECTORIES + 8 * (DIR_CERTIFICATE + 1) {
        return Err(bad("optional header too short"));
    }
    let field = |off: usize| u32_at(d, opt + off).ok_or_else(|| bad("truncated optional header"));
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let h = table + i * SECTION_HEADER;
        let raw = d
            .get(h..h + SECTION_HEADER)
            .ok_or_else(|| bad("truncated section table"))?;
        let name_end = raw[..8].iter().position(|&b| b == 0).unwrap_or(8);
        let word = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        sections.push(Section {
            name: String::from_utf8_lossy(&raw[..name_end]).into_owned(),
            virtual_size: word(8),
            virtual_address: word(12),
            raw_size: word(16),
            raw_offset: word(20),
            characteristics: word(36),
        });
    }
    let l = Layout {
        opt,
        table,
        sections,
        file_align: field(OPT_FILE_ALIGNMENT)?,
        section_align: field(OPT_SECTION_ALIGNMENT)?,
        size_of_headers: field(OPT_SIZE_OF_HEADERS)?,
    };
    if !l.file_align.is_power_of_two() || !l.section_align.is_power_of_two() {
        return Err(bad("alignments are not powers of two"));
    }
    Ok(l)
}

/// The section headers of a PE file.
pub fn sections(d: &[u8], what: &str) -> Result<Vec<Section>, PeError> {
    Ok(parse(d, what)?.sections)
}

/// The contents of section `name` (its virtual size, as the stub reads it), if present.
pub fn section<'a>(d: &'a [u8], name: &str, what: &str) -> Result<Option<&'a [u8]>, PeError> {
    let Some(s) = sections(d, what)?.into_iter().find(|s| s.name == name) else {
        return Ok(None);
    };
    let start = s.raw_offset as usize;
    let len = s.virtual_size.min(s.raw_size) as usize;
    d.get(start..start + len).map(Some).ok_or_else(|| {
        format_err(
            what,
            format!("section {name} lies past the end of the file"),
        )
    })
}

/// What goes into one UKI.
pub struct Parts<'a> {
    pub osrel: &'a [u8],
    pub cmdline: &'a str,
    pub initrd: &'a [u8],
    pub linux: &'a [u8],
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Builds a UKI from `stub` (an unsigned systemd-stub). The result is a function of the inputs
/// only; the PE checksum is recomputed (signing tools leave it to us).
pub fn build(stub: &[u8], parts: &Parts, what: &str) -> Result<Vec<u8>, PeError> {
    let l = parse(stub, what)?;
    let added: [(&str, &[u8]); 4] = [
        (OSREL, parts.osrel),
        (CMDLINE, parts.cmdline.as_bytes()),
        (INITRD, parts.initrd),
        (LINUX, parts.linux),
    ];
    for (name, _) in &added {
        if l.sections.iter().any(|s| s.name == *name) {
            return Err(PeError::Duplicate {
                what: what.into(),
                name: (*name).into(),
            });
        }
    }
    let count = l.sections.len() + added.len();
    if count > MAX_SECTIONS {
        return Err(PeError::TooManySections {
            what: what.into(),
            count,
        });
    }
    let table_end = l.table + count * SECTION_HEADER;
    let first_raw = l
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset as usize)
        .min()
        .unwrap_or(stub.len());
    if table_end > first_raw || table_end > l.size_of_headers as usize {
        return Err(PeError::NoRoom {
            what: what.into(),
            need: added.len(),
        });
    }
    // The stub's own bytes end at its last section (a signature past it would be stale).
    let stub_end = l
        .sections
        .iter()
        .map(|s| s.raw_offset as u64 + s.raw_size as u64)
        .max()
        .unwrap_or(stub.len() as u64)
        .min(stub.len() as u64);
    let mut vma = l
        .sections
        .iter()
        .map(|s| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64)
        .max()
        .unwrap_or(0);
    let mut file_off = stub_end;
    let mut headers = Vec::new();
    for (name, data) in &added {
        vma = align(vma, PAGE);
        file_off = align(file_off, l.file_align as u64);
        let raw_size = align(data.len() as u64, l.file_align as u64);
        headers.push((name, data, vma, file_off, raw_size));
        vma += data.len() as u64;
        file_off += raw_size;
    }
    let total = file_off;
    if total >= 1 << 31 {
        return Err(PeError::TooLarge {
            what: what.into(),
            size: total,
        });
    }
    let mut out = vec![0u8; total as usize];
    out[..stub_end as usize].copy_from_slice(&stub[..stub_end as usize]);
    let mut init_data = u32_at(&out, l.opt + OPT_SIZE_OF_INITIALIZED_DATA).unwrap_or(0);
    for (i, (name, data, vma, off, raw_size)) in headers.iter().enumerate() {
        let h = l.table + (l.sections.len() + i) * SECTION_HEADER;
        let mut raw_name = [0u8; 8];
        raw_name[..name.len()].copy_from_slice(name.as_bytes());
        out[h..h + 8].copy_from_slice(&raw_name);
        put_u32(&mut out, h + 8, data.len() as u32);
        put_u32(&mut out, h + 12, *vma as u32);
        put_u32(&mut out, h + 16, *raw_size as u32);
        put_u32(&mut out, h + 20, *off as u32);
        out[h + 24..h + 36].fill(0); // relocations, line numbers: none
        put_u32(
            &mut out,
            h + 36,
            IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        );
        out[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        init_data = init_data.wrapping_add(*raw_size as u32);
    }
    let pe = l.opt - 24;
    put_u16(&mut out, pe + 6, count as u16);
    // No COFF symbol table in an image. The 252 stub records a stray symbol count with a
    // null pointer; binutils then reads "symbols" from inside our sections and refuses the file.
    put_u32(&mut out, pe + 8, 0);
    put_u32(&mut out, pe + 12, 0);
    put_u32(&mut out, l.opt + OPT_SIZE_OF_INITIALIZED_DATA, init_data);
    put_u32(
        &mut out,
        l.opt + OPT_SIZE_OF_IMAGE,
        align(vma, l.section_align as u64) as u32,
    );
    // No certificate table: the stub is unsigned, and a signature of the stub alone would be
    // invalid for the UKI anyway.
    let cert_dir = l.opt + OPT_DATA_DIRECTORIES + 8 * DIR_CERTIFICATE;
    out[cert_dir..cert_dir + 8].fill(0);
    let sum = checksum(&out, l.opt + OPT_CHECKSUM);
    put_u32(&mut out, l.opt + OPT_CHECKSUM, sum);
    Ok(out)
}

/// The PE image checksum (as `imagehlp!CheckSumMappedFile` computes it): a 16-bit folded
/// one's-complement sum of the file's 16-bit words, skipping the checksum field, plus the
/// file length.
pub fn checksum(d: &[u8], field: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < d.len() {
        if i == field || i == field + 2 {
            i += 2;
            continue;
        }
        let w = if i + 1 < d.len() {
            u16::from_le_bytes([d[i], d[i + 1]])
        } else {
            d[i] as u16
        };
        sum += w as u64;
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(d.len() as u32)
}

/// The offset of the checksum field in a PE file.
pub fn checksum_offset(d: &[u8], what: &str) -> Result<usize, PeError> {
    Ok(parse(d, what)?.opt + OPT_CHECKSUM)
}

/// A Type #2 entry's place on the ESP.
pub fn esp_path(name: &str, version: &str, slot: char) -> String {
    // The contract's entry name (no boot counter: a built image's entry is good), so the
    // builder and `rke2-update` cannot disagree about it.
    rke2_image_contract::update::Entry {
        name: name.into(),
        version: version.into(),
        slot,
        tries_left: None,
        tries_done: None,
    }
    .esp_path()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_path_is_the_contracts_good_entry() {
        use rke2_image_contract::update::{Entry, EntryState};
        let p = esp_path("rke2-node", "1.2.0", 'a');
        assert_eq!(p, "EFI/Linux/rke2-node-1.2.0-a.efi");
        let file = p.strip_prefix("EFI/Linux/").unwrap();
        let e = Entry::parse("rke2-node", file).unwrap();
        assert_eq!((e.slot, e.state()), ('a', EntryState::Good));
    }

    fn fake_stub() -> Vec<u8> {
        rke2_testsupport::pe::stub_like_252()
    }

    fn parts() -> Parts<'static> {
        Parts {
            osrel: b"ID=debian\n",
            cmdline: "rke2.roothash=ab ro",
            initrd: &[7u8; 5000],
            linux: &[9u8; 10000],
        }
    }

    #[test]
    fn sections_are_page_aligned_and_read_back() {
        let uki = build(&fake_stub(), &parts(), "stub").unwrap();
        let s = sections(&uki, "uki").unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [".text", ".sbat", ".osrel", ".cmdline", ".initrd", ".linux"]
        );
        for s in &s[2..] {
            assert_eq!(s.virtual_address % 4096, 0, "{s:?}");
            assert_eq!(s.raw_offset % 0x200, 0, "{s:?}");
            assert_eq!(s.raw_size % 0x200, 0, "{s:?}");
        }
        assert_eq!(
            section(&uki, CMDLINE, "uki").unwrap().unwrap(),
            b"rke2.roothash=ab ro"
        );
        assert_eq!(section(&uki, LINUX, "uki").unwrap().unwrap(), &[9u8; 10000]);
        for w in s.windows(2) {
            assert_eq!(w[0].raw_offset + w[0].raw_size, w[1].raw_offset, "file gap");
        }
        let last = s.last().unwrap();
        let size_of_image = u32_at(&uki, 0x98 + OPT_SIZE_OF_IMAGE).unwrap();
        assert!(size_of_image >= last.virtual_address + last.virtual_size);
        assert_eq!(size_of_image % 0x200, 0);
        assert_eq!(u32_at(&uki, 0x80 + 12), Some(0));
        let off = checksum_offset(&uki, "uki").unwrap();
        assert_eq!(u32_at(&uki, off).unwrap(), checksum(&uki, off));
        // Deterministic.
        assert_eq!(uki, build(&fake_stub(), &parts(), "stub").unwrap());
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            build(b"not a pe", &parts(), "x"),
            Err(PeError::Format { .. })
        ));
        let uki = build(&fake_stub(), &parts(), "stub").unwrap();
        assert!(matches!(
            build(&uki, &parts(), "uki"),
            Err(PeError::Duplicate { .. })
        ));
        let mut cramped = fake_stub();
        put_u32(&mut cramped, 0x98 + OPT_SIZE_OF_HEADERS, 0x200);
        assert!(matches!(
            build(&cramped, &parts(), "x"),
            Err(PeError::NoRoom { .. })
        ));
    }

    #[test]
    fn checksum_matches_a_known_value() {
        // Zeros sum to the length; the field itself is skipped; carries fold back in
        // (0x0001 + 0xffff = 0x10000 -> 0x0001), then the length is added.
        assert_eq!(checksum(&[0, 0, 0, 0, 0, 0, 0, 0], 4), 8);
        assert_eq!(checksum(&[1, 0, 0x55, 0x55, 0xff, 0xff], 2), 1 + 6);
    }
}
