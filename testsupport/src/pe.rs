//! A minimal PE32+ file shaped like systemd 252's EFI stub (`linuxx64.efi.stub`): headers up
//! to 0x400, `.text` and `.sbat`, and the stray COFF symbol count the real stub carries. Enough
//! for the builder to lay a unified kernel image out on it; it does not run.

fn put_u16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn stub_like_252() -> Vec<u8> {
    let mut d = vec![0u8; 0x800];
    d[0..2].copy_from_slice(b"MZ");
    put_u32(&mut d, 0x3c, 0x80);
    d[0x80..0x84].copy_from_slice(b"PE\0\0");
    put_u16(&mut d, 0x80 + 4, 0x8664); // x86-64
    put_u16(&mut d, 0x80 + 6, 2); // sections
    put_u16(&mut d, 0x80 + 20, 240); // optional header size
    put_u32(&mut d, 0x80 + 12, 70656); // stray symbol count, as in the 252 stub
    let opt = 0x98;
    put_u16(&mut d, opt, 0x20b); // PE32+
    put_u32(&mut d, opt + 32, 0x200); // SectionAlignment
    put_u32(&mut d, opt + 36, 0x200); // FileAlignment
    put_u32(&mut d, opt + 56, 0x2400); // SizeOfImage
    put_u32(&mut d, opt + 60, 0x400); // SizeOfHeaders
    let table = opt + 240;
    for (i, (name, vma, off)) in [(".text", 0x1000u32, 0x400u32), (".sbat", 0x2000, 0x600)]
        .iter()
        .enumerate()
    {
        let h = table + i * 40;
        d[h..h + name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut d, h + 8, 0x100);
        put_u32(&mut d, h + 12, *vma);
        put_u32(&mut d, h + 16, 0x200);
        put_u32(&mut d, h + 20, *off);
    }
    d[0x400] = 0xc3;
    d[0x600..0x605].copy_from_slice(b"sbat,");
    d
}
