//! Network boot through real firmware: OVMF's PXE client fetches Debian's `ipxe.efi` over
//! QEMU's TFTP, iPXE fetches an iPXE script and the files beside it over HTTP from a server on
//! 127.0.0.1 (reached through a `guestfwd` of a `restrict=on` user network).
//!
//! How iPXE gets to the script: QEMU's DHCP hands every client the same boot file, so iPXE,
//! loaded as `ipxe.efi`, would fetch and start `ipxe.efi` again forever, and Debian's 2019
//! build neither embeds a script nor looks for `autoexec.ipxe`. Real deployments answer iPXE's
//! DHCP request (user class `iPXE`) with the script's URL instead; here the TFTP file is
//! replaced by a short iPXE script once iPXE prints its banner ([`Netboot::chain`]), so
//! iPXE's own fetch of the boot file gets the script (iPXE recognises `#!ipxe` whatever the
//! name).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::vm::{Boot, Net, Nic, Vm};

/// Debian package `ipxe`.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// The banner of the iPXE that OVMF's PXE client loaded: OVMF's download is over, iPXE's
/// own DHCP and fetch of the boot file have not started (its Ctrl-B prompt comes first).
pub const IPXE_STARTED: &str = "Open Source Network Boot Firmware";
/// Where the guest reaches the HTTP server.
pub const HTTP_GUEST: &str = "10.0.2.100:80";
/// The root lives in RAM twice while the kernel unpacks it (the loaded initrd and the
/// unpacked file), on top of the running system.
pub const PXE_MEMORY_MIB: u32 = 3072;

/// A static file server for one directory: GET of a plain file name, `Connection: close`.
/// Records every request line.
pub struct Http {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serve `file` with the byte at `offset` flipped (a corrupted download).
#[derive(Debug, Clone)]
pub struct Corrupt {
    pub file: String,
    pub offset: u64,
}

impl Http {
    pub fn start(dir: PathBuf, corrupt: Option<Corrupt>) -> Result<Http> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the HTTP server")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let dir = dir.clone();
                let log = Arc::clone(&log);
                let corrupt = corrupt.clone();
                std::thread::spawn(move || serve(conn, &dir, &log, corrupt.as_ref()));
            }
        });
        Ok(Http { addr, requests })
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn serve(conn: TcpStream, dir: &Path, log: &Mutex<Vec<String>>, corrupt: Option<&Corrupt>) {
    let Ok(clone) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(clone);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    if let Ok(mut l) = log.lock() {
        l.push(line.trim().to_string());
    }
    let mut out = conn;
    let name = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .trim_start_matches('/');
    let file = (!name.is_empty() && !name.contains('/') && !name.starts_with('.'))
        .then(|| std::fs::File::open(dir.join(name)).ok())
        .flatten();
    match file.and_then(|f| f.metadata().ok().map(|m| (f, m.len()))) {
        Some((mut f, len)) => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            match corrupt.filter(|c| c.file == name) {
                Some(c) => {
                    let _ = std::io::copy(&mut (&mut f).take(c.offset), &mut out);
                    let mut b = [0u8; 1];
                    if f.read_exact(&mut b).is_ok() {
                        let _ = out.write_all(&[b[0] ^ 0x01]);
                    }
                    let _ = std::io::copy(&mut f, &mut out);
                }
                None => {
                    let _ = std::io::copy(&mut f, &mut out);
                }
            }
        }
        None => {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
    let _ = out.flush();
}

/// One machine's network boot: its TFTP directory (with `ipxe.efi`) and the HTTP server for
/// the `pxe` output directory.
pub struct Netboot {
    pub tftp: PathBuf,
    pub http: Http,
}

impl Netboot {
    /// Serves `pxe` (optionally with a corrupted file); the TFTP directory is
    /// `<work>/<name>-tftp`.
    pub fn start(work: &Path, name: &str, pxe: &Path, corrupt: Option<Corrupt>) -> Result<Netboot> {
        let tftp = work.join(format!("{name}-tftp"));
        std::fs::create_dir_all(&tftp)?;
        std::fs::copy(IPXE_EFI, tftp.join("ipxe.efi"))
            .with_context(|| format!("copying {IPXE_EFI} (install the ipxe package)"))?;
        let http = Http::start(pxe.to_path_buf(), corrupt)?;
        Ok(Netboot { tftp, http })
    }

    /// How the VM boots: OVMF PXE over the first user-network NIC.
    pub fn boot(&self) -> Boot {
        Boot::Pxe {
            tftp: self.tftp.clone(),
            bootfile: "ipxe.efi".into(),
        }
    }

    /// The boot NIC: a `restrict=on` user network whose only way out is the HTTP server.
    pub fn nic(&self, mac: &str) -> Result<Nic> {
        Ok(Nic {
            mac: mac.into(),
            net: Net::User {
                forwards: vec![(HTTP_GUEST.parse()?, self.http.addr)],
            },
        })
    }

    /// Waits for iPXE to start, then makes the TFTP boot file a script that chains `script`
    /// (a file of the `pxe` directory) over HTTP.
    pub fn chain(&self, vm: &mut Vm, script: &str, fatal: &[&str]) -> Result<()> {
        vm.wait_for(IPXE_STARTED, fatal, Duration::from_secs(600))
            .context("OVMF PXE loading iPXE")?;
        let next = self.tftp.join("ipxe.efi.next");
        std::fs::write(
            &next,
            format!(
                "#!ipxe\necho rke2 test: chaining {script}\nchain http://{HTTP_GUEST}/{script}\n"
            ),
        )?;
        std::fs::rename(&next, self.tftp.join("ipxe.efi"))?;
        Ok(())
    }
}
