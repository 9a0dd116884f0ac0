//! A private Ethernet segment between VMs on this machine: every VM gets a QEMU UDP socket
//! netdev (`-netdev socket,udp=HUB,localaddr=ME`) on 127.0.0.1 and the hub repeats each frame
//! it receives from one member to all the others. QEMU's own socket netdev connects only two
//! VMs (`listen`/`connect`) and multicast needs a multicast route on loopback, which fresh
//! machines do not have; a hub needs neither and never leaves 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vm::Net;

/// A running hub. Dropping it stops the repeater thread.
pub struct Hub {
    addr: SocketAddr,
    members: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("addr", &self.addr)
            .field("members", &self.members)
            .finish()
    }
}

/// A free UDP port on 127.0.0.1 (bound and released; QEMU binds it right after).
fn free_port() -> std::io::Result<SocketAddr> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

impl Hub {
    /// A hub with `n` member ports.
    pub fn start(n: usize) -> std::io::Result<Hub> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = sock.local_addr()?;
        let members = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, frames, members) = (stop.clone(), frames.clone(), members.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if !members.contains(&from) {
                        continue;
                    }
                    frames.fetch_add(1, Ordering::Relaxed);
                    for m in members.iter().filter(|m| **m != from) {
                        // A member that is not running yet simply misses the frame, as on a
                        // real segment.
                        let _ = sock.send_to(&buf[..len], m);
                    }
                }
            })
        };
        Ok(Hub {
            addr,
            members,
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// The network of member `i`, for [`crate::vm::Nic`].
    pub fn port(&self, i: usize) -> Net {
        Net::Hub {
            hub: self.addr,
            local: self.members[i],
        }
    }

    /// Frames repeated so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn repeats_frames_to_every_other_member_only() {
        let hub = Hub::start(3).unwrap();
        let socks: Vec<UdpSocket> = hub
            .members
            .iter()
            .map(|m| {
                let s = UdpSocket::bind(m).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        socks[0].send_to(b"frame-from-0", hub.addr).unwrap();
        let mut b = [0u8; 64];
        for s in &socks[1..] {
            let (n, from) = s.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], b"frame-from-0");
            assert_eq!(from, hub.addr);
        }
        socks[0]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(socks[0].recv_from(&mut b).is_err(), "no echo to the sender");
        // Strangers are not members of the segment.
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger.send_to(b"x", hub.addr).unwrap();
        socks[1]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(socks[1].recv_from(&mut b).is_err());
        assert_eq!(hub.frames(), 1);
    }
}
