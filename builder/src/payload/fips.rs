//! FIPS gate: the Go build information of the `rke2` binary (ELF section `.go.buildinfo`, the
//! data `go version -m` prints) must say it was built with BoringCrypto.
//!
//! Layout (Go 1.18+; rke2 has been built with newer Go for years): 14-byte magic
//! `\xff Go buildinf:`, pointer size, flags (bit 1: strings inline), then at offset 32 the Go
//! version and the module info as uvarint-length-prefixed strings. The module info carries
//! `build\tKEY=VALUE` lines (`GOEXPERIMENT=boringcrypto`, `-ldflags=...`).

use std::collections::BTreeMap;

use rke2_image_contract::manifest::Check;

use super::{check, Options, PayloadError};

const MAGIC: &[u8] = b"\xff Go buildinf:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub go_version: String,
    /// `build` settings, last one wins.
    pub settings: BTreeMap<String, String>,
}

fn section<'a>(elf: &'a [u8], want: &str) -> Result<&'a [u8], String> {
    let get = |o: usize, n: usize| {
        elf.get(o..o + n)
            .ok_or_else(|| "truncated ELF file".to_string())
    };
    let u16at = |o: usize| get(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32at = |o: usize| get(o, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64at = |o: usize| {
        get(o, 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a) as usize
        })
    };
    if get(0, 4)? != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if get(4, 2)? != [2, 1] {
        return Err("not a little-endian 64-bit ELF file (rke2 for amd64 is one)".into());
    }
    let shoff = u64at(0x28)?;
    let shentsize = u16at(0x3a)?;
    let shnum = u16at(0x3c)?;
    let shstrndx = u16at(0x3e)?;
    let hdr = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab = u64at(hdr(shstrndx).ok_or("bad section header offset")? + 0x18)?;
    for i in 0..shnum {
        let h = hdr(i).ok_or("bad section header offset")?;
        let name_at = strtab.checked_add(u32at(h)?).ok_or("bad section name")?;
        let rest = elf.get(name_at..).ok_or("bad section name offset")?;
        let name = &rest[..rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated section name")?];
        if name == want.as_bytes() {
            let off = u64at(h + 0x18)?;
            let size = u64at(h + 0x20)?;
            return elf
                .get(off..off.checked_add(size).ok_or("bad section size")?)
                .ok_or_else(|| format!("section {want} lies outside the file"));
        }
    }
    Err(format!(
        "no {want} section: not a Go binary, or stripped of its build information"
    ))
}

fn uvarint(b: &[u8]) -> Result<(usize, usize), String> {
    let mut n: u64 = 0;
    for (i, &x) in b.iter().enumerate().take(10) {
        n |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            return Ok((usize::try_from(n).map_err(|_| "length too large")?, i + 1));
        }
    }
    Err("bad length prefix".into())
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

impl BuildInfo {
    /// Reads the build information of a Go ELF binary.
    pub fn parse(elf: &[u8]) -> Result<BuildInfo, String> {
        let sec = section(elf, ".go.buildinfo")?;
        if sec.get(..MAGIC.len()) != Some(MAGIC) {
            return Err(".go.buildinfo does not start with the Go build-info magic".into());
        }
        let flags = *sec.get(15).ok_or("truncated .go.buildinfo")?;
        if flags & 2 == 0 {
            return Err(
                "build information in the pre-Go-1.18 pointer form; this rke2 is too old to check"
                    .into(),
            );
        }
        let mut at = 32;
        let mut string = || -> Result<&[u8], String> {
            let (len, n) = uvarint(sec.get(at..).ok_or("truncated .go.buildinfo")?)?;
            let s = sec
                .get(at + n..at + n + len)
                .ok_or("truncated .go.buildinfo string")?;
            at += n + len;
            Ok(s)
        };
        let go_version = String::from_utf8_lossy(string()?).into_owned();
        let modinfo = string()?;
        // The module info is wrapped in 16-byte (non-UTF-8) sentinels and ends with a newline.
        let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
            String::from_utf8_lossy(&modinfo[16..modinfo.len() - 16]).into_owned()
        } else {
            String::new()
        };
        let mut settings = BTreeMap::new();
        for line in modinfo.lines() {
            if let Some(kv) = line.strip_prefix("build\t") {
                if let Some((k, v)) = kv.split_once('=') {
                    settings.insert(k.to_string(), unquote(v));
                }
            }
        }
        Ok(BuildInfo {
            go_version,
            settings,
        })
    }

    /// Whether the binary uses BoringCrypto: `GOEXPERIMENT` includes `boringcrypto`, or the Go
    /// version carries the `X:boringcrypto` marker Go adds for that experiment.
    pub fn boringcrypto(&self) -> bool {
        let exp = self
            .settings
            .get("GOEXPERIMENT")
            .is_some_and(|v| v.split(',').any(|e| e.trim() == "boringcrypto"));
        let marker = self.go_version.split_whitespace().any(|w| {
            w.strip_prefix("X:")
                .is_some_and(|x| x.split(',').any(|e| e == "boringcrypto"))
        });
        exp || marker
    }

    /// The version rke2 was linked with (`-X .../pkg/version.Version=...`), when recorded.
    pub fn rke2_version(&self) -> Option<String> {
        let ld = self.settings.get("-ldflags")?;
        let rest = ld.split("pkg/version.Version=").nth(1)?;
        rest.split([' ', '\'', '"'])
            .next()
            .map(str::to_string)
            .filter(|v| !v.is_empty())
    }
}

/// The `fips-supervisor` check. Fails the build unless BoringCrypto, or warns when allowed.
pub fn gate(
    info: &BuildInfo,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Check, PayloadError> {
    let desc = format!(
        "{}, GOEXPERIMENT={}",
        info.go_version,
        info.settings
            .get("GOEXPERIMENT")
            .map(String::as_str)
            .unwrap_or("(none)")
    );
    if !opts.fips {
        return Ok(check(
            "fips-supervisor",
            "skipped",
            format!("security.fips is off; rke2 built with {desc}"),
        ));
    }
    if info.boringcrypto() {
        return Ok(check(
            "fips-supervisor",
            "passed",
            format!("rke2 built with BoringCrypto ({desc})"),
        ));
    }
    let message = format!("rke2 was built without BoringCrypto ({desc})");
    if opts.allow_non_fips_supervisor {
        log(&format!(
            "rke2: warning: {message}; continuing because of --allow-non-fips-supervisor"
        ));
        return Ok(check("fips-supervisor", "warned", message));
    }
    Err(PayloadError::NotFips {
        binary: super::install::BUNDLE_BIN.into(),
        message,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf_and_missing_section() {
        assert!(BuildInfo::parse(b"MZ\x90\x00")
            .unwrap_err()
            .contains("not an ELF"));
        // This test binary is a Rust ELF without Go build information.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(BuildInfo::parse(&me)
            .unwrap_err()
            .contains("no .go.buildinfo section"));
    }

    #[test]
    fn boringcrypto_from_setting_or_version_marker() {
        let mut b = BuildInfo {
            go_version: "go1.22.5".into(),
            settings: BTreeMap::new(),
        };
        assert!(!b.boringcrypto());
        b.settings
            .insert("GOEXPERIMENT".into(), "loopvar,boringcrypto".into());
        assert!(b.boringcrypto());
        let c = BuildInfo {
            go_version: "go1.22.5 X:boringcrypto".into(),
            settings: BTreeMap::new(),
        };
        assert!(c.boringcrypto());
        b.settings.insert(
            "-ldflags".into(),
            "-X github.com/k3s-io/k3s/pkg/version.Version=v1.31.5+rke2r1 -w".into(),
        );
        assert_eq!(b.rke2_version().as_deref(), Some("v1.31.5+rke2r1"));
    }
}
