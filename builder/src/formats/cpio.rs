//! Deterministic cpio "newc" (SVR4, no CRC) writer, the format the kernel unpacks an initramfs
//! from. Every entry gets uid/gid 0, the caller's mtime, and inode numbers in the order entries
//! are added; nothing depends on the build host. Hard links are not supported (not needed for
//! an initrd).
//!
//! Entry names are written as given, without a leading `/` (GNU cpio and the kernel both accept
//! relative names); parents must be added before their children.

use std::io::{self, Read, Write};

use crate::tree::{S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry {path:?}: {what} {value} does not fit the 32-bit newc field")]
    TooLarge {
        path: String,
        what: &'static str,
        value: u64,
    },
    #[error("cpio entry {0:?}: the name is empty, absolute, or holds a NUL byte")]
    BadName(String),
    #[error("cpio entry {path:?}: the content reader gave {got} bytes, {expected} were declared")]
    ShortContent {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("writing cpio entry {path:?}: {source}")]
    Io { path: String, source: io::Error },
}

/// Streams newc entries to `out`; call [`Writer::finish`] to write the trailer.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    /// Bytes written so far, for the 4-byte alignment of names and data.
    offset: u64,
}

fn field(path: &str, what: &'static str, value: u64) -> Result<u32, CpioError> {
    u32::try_from(value).map_err(|_| CpioError::TooLarge {
        path: path.to_string(),
        what,
        value,
    })
}

impl<W: Write> Writer<W> {
    /// `mtime` (seconds since the epoch) is stamped on every entry.
    pub fn new(out: W, mtime: u64) -> Result<Writer<W>, CpioError> {
        Ok(Writer {
            out,
            mtime: field("(archive)", "mtime", mtime)?,
            next_ino: 1,
            offset: 0,
        })
    }

    fn io(path: &str) -> impl FnOnce(io::Error) -> CpioError + '_ {
        move |source| CpioError::Io {
            path: path.to_string(),
            source,
        }
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes).map_err(Self::io(path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self, path: &str) -> Result<(), CpioError> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.write(path, &[0u8; 3][..pad])
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> Result<(), CpioError> {
        if name != TRAILER && (name.is_empty() || name.starts_with('/') || name.contains('\0')) {
            return Err(CpioError::BadName(name.to_string()));
        }
        let size = field(name, "file size", size)?;
        let namesize = field(name, "name length", name.len() as u64 + 1)?;
        let fields = [
            ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut h = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.write(name, &h)?;
        self.pad4(name)
    }

    fn ino(&mut self) -> u32 {
        let i = self.next_ino;
        self.next_ino += 1;
        i
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let ino = self.ino();
        self.header(path, ino, S_IFDIR | (perm & 0o7777), 2, 0, (0, 0))
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.file_from_reader(path, perm, data.len() as u64, &mut &data[..])
    }

    /// A regular file of exactly `len` bytes read from `content` (streamed, not buffered).
    pub fn file_from_reader(
        &mut self,
        path: &str,
        perm: u32,
        len: u64,
        content: &mut dyn Read,
    ) -> Result<(), CpioError> {
        let ino = self.ino();
        self.header(path, ino, S_IFREG | (perm & 0o7777), 1, len, (0, 0))?;
        let copied = io::copy(&mut content.take(len), &mut self.out).map_err(Self::io(path))?;
        self.offset += copied;
        if copied != len {
            return Err(CpioError::ShortContent {
                path: path.to_string(),
                expected: len,
                got: copied,
            });
        }
        self.pad4(path)
    }

    pub fn symlink(&mut self, path: &str, target: &[u8]) -> Result<(), CpioError> {
        let ino = self.ino();
        self.header(path, ino, S_IFLNK | 0o777, 1, target.len() as u64, (0, 0))?;
        self.write(path, target)?;
        self.pad4(path)
    }

    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let ino = self.ino();
        self.header(path, ino, S_IFCHR | (perm & 0o7777), 1, 0, (major, minor))
    }

    /// Writes the `TRAILER!!!` entry, pads the archive to a 512-byte multiple (as GNU cpio
    /// does) and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(TRAILER, 0, 0, 1, 0, (0, 0))?;
        let pad = ((512 - self.offset % 512) % 512) as usize;
        self.write(TRAILER, &vec![0u8; pad])?;
        self.out.flush().map_err(Self::io(TRAILER))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut w = Writer::new(Vec::new(), 0x1234).unwrap();
        w.file("a", 0o644, b"xyz").unwrap();
        let out = w.finish().unwrap();
        let hdr = std::str::from_utf8(&out[..HEADER_LEN]).unwrap();
        assert_eq!(
            hdr,
            "070701\
             00000001000081A4000000000000000000000001\
             0000123400000003000000000000000000000000\
             000000000000000200000000"
        );
        // header (110) + "a\0" = 112, aligned; data 3 bytes + 1 pad.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(out.len() % 512, 0);
    }

    #[test]
    fn rejects_bad_input() {
        let mut w = Writer::new(Vec::new(), 0).unwrap();
        assert!(matches!(w.dir("/abs", 0o755), Err(CpioError::BadName(_))));
        let e = w
            .file_from_reader("f", 0o644, 10, &mut &b"short"[..])
            .unwrap_err();
        assert!(matches!(e, CpioError::ShortContent { got: 5, .. }), "{e}");
        assert!(Writer::new(Vec::new(), 1 << 33).is_err());
    }

    /// GNU cpio, run as root, must extract exactly the tree we wrote.
    #[test]
    fn gnu_cpio_extracts_the_same_tree() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        use std::process::{Command, Stdio};

        let mut w = Writer::new(Vec::new(), 1_700_000_000).unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.char_dev("dev/big", 0o640, 259, 70000).unwrap();
        w.dir("etc", 0o700).unwrap();
        w.file("etc/empty", 0o600, b"").unwrap();
        let big: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        w.file("etc/big", 0o644, &big).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("sbin", b"usr/sbin").unwrap();
        w.dir("usr", 0o755).unwrap();
        w.dir("usr/sbin", 0o755).unwrap();
        w.file("usr/sbin/x y", 0o4755, b"odd name").unwrap();
        let archive = w.finish().unwrap();

        let list = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(&archive)?;
                c.wait_with_output()
            })
            .expect("GNU cpio must be installed");
        assert!(list.status.success());
        assert_eq!(
            String::from_utf8(list.stdout).unwrap(),
            "dev\ndev/console\ndev/big\netc\netc/empty\netc/big\ninit\nsbin\nusr\nusr/sbin\nusr/sbin/x y\n"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(&archive).unwrap();
        }
        assert!(c.wait().unwrap().success());

        let p = |s: &str| dir.path().join(s);
        let meta = |s: &str| std::fs::symlink_metadata(p(s)).unwrap();
        let perm = |s: &str| meta(s).permissions().mode() & 0o7777;
        assert!(meta("dev").is_dir());
        assert_eq!(perm("etc"), 0o700);
        let con = meta("dev/console");
        assert!(con.file_type().is_char_device());
        assert_eq!(perm("dev/console"), 0o600);
        // Linux dev_t encoding: major in bits 8..20 and 32.., minor in bits 0..8 and 20..32.
        let dev = |rdev: u64| {
            (
                ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
                (rdev & 0xff) | ((rdev >> 12) & !0xff),
            )
        };
        assert_eq!(dev(con.rdev()), (5, 1));
        assert_eq!(dev(meta("dev/big").rdev()), (259, 70000));
        assert_eq!(std::fs::read(p("etc/big")).unwrap(), big);
        assert_eq!(std::fs::read(p("etc/empty")).unwrap(), b"");
        assert_eq!(perm("init"), 0o755);
        assert_eq!(std::fs::read(p("init")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(meta("init").mtime(), 1_700_000_000);
        assert_eq!(meta("init").uid(), 0);
        assert_eq!(
            std::fs::read_link(p("sbin")).unwrap(),
            std::path::Path::new("usr/sbin")
        );
        assert_eq!(perm("usr/sbin/x y"), 0o4755);
        assert_eq!(std::fs::read(p("usr/sbin/x y")).unwrap(), b"odd name");
    }
}
