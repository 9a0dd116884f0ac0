//! One QEMU virtual machine with its serial console captured.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot capable OVMF (needs SMM) and a variable store with the snakeoil key enrolled
/// (Debian's ovmf package; the key is /usr/share/ovmf/PkKek-1-snakeoil.key, passphrase
/// `snakeoil`).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// Lines of console printed with every failure.
pub const TAIL_LINES: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("starting {QEMU}: {0} (install qemu-system-x86)")]
    Spawn(std::io::Error),
    #[error("copying {OVMF_VARS} to {1}: {0} (install ovmf)")]
    Vars(std::io::Error, PathBuf),
    #[error("timed out after {secs} s waiting for {what}; console tail:\n{tail}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("QEMU exited ({status}) while waiting for {what}; console tail:\n{tail}")]
    Exited {
        what: String,
        status: String,
        tail: String,
    },
    #[error("console showed {bad:?} while waiting for {what}; console tail:\n{tail}")]
    Forbidden {
        what: String,
        bad: String,
        tail: String,
    },
}

/// How the machine starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// UEFI firmware (OVMF) from the disk's ESP, as real machines boot the image.
    Uefi,
    /// OVMF with Secure Boot enforced (SMM firmware, secure pflash) and the variable store
    /// copied from `vars` (e.g. [`OVMF_VARS_SNAKEOIL`]: PK/KEK/db hold Debian's test key).
    SecureUefi { vars: PathBuf },
    /// OVMF network boot, diskless (the config's `disk` is not attached): the first
    /// [`Net::User`] NIC is the boot device and QEMU's DHCP/TFTP serves `bootfile` from `tftp`.
    Pxe { tftp: PathBuf, bootfile: String },
    /// OVMF booting the config's `disk` (an ISO) from a virtual CD-ROM drive: an ATAPI drive
    /// on q35's AHCI controller (`ide-cd`), read-only, first in the boot order. The guest sees
    /// it as `sr0`, with no partition devices.
    Cdrom,
    /// QEMU loads kernel and initrd itself (no firmware, faster; for hand-made disks).
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
}

/// Where a NIC is plugged in. Nothing here reaches beyond 127.0.0.1.
#[derive(Debug, Clone)]
pub enum Net {
    /// A member port of a [`crate::hub::Hub`] (a QEMU UDP socket netdev on 127.0.0.1).
    Hub { hub: SocketAddr, local: SocketAddr },
    /// QEMU user networking, isolated (`restrict=on`), guest network 10.0.2.0/24; each forward
    /// makes `guest` (an address:port inside that network) a TCP tunnel to `host` (on
    /// 127.0.0.1): every guest connection spawns `nc -N host port` (a `tcp:` chardev instead
    /// would connect once, at QEMU start, and carry a single connection).
    User {
        forwards: Vec<(SocketAddr, SocketAddr)>,
    },
}

#[derive(Debug, Clone)]
pub struct Nic {
    /// `52:54:00:xx:xx:xx`
    pub mac: String,
    pub net: Net,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub disk: PathBuf,
    pub boot: Boot,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Also write the console to this file (kept for inspection after the test).
    pub log: Option<PathBuf>,
    /// Virtio NICs; none: the machine has no network at all.
    pub nics: Vec<Nic>,
    /// `-fw_cfg name=NAME,file=PATH` entries (configuration and test knobs).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// More disks, attached read-only after the boot disk (config drives).
    pub drives: Vec<PathBuf>,
    /// Writable raw disks attached after those (e.g. a diskless node's state disk).
    pub rw_drives: Vec<PathBuf>,
    /// Disks with a serial the guest sees as `/dev/disk/by-id/virtio-<serial>` (stable
    /// whatever the attach order), attached after the others.
    pub named_drives: Vec<NamedDrive>,
    /// Let a guest reboot restart the machine (same firmware variables) instead of ending QEMU.
    pub reboot: bool,
}

/// A virtio disk with a serial (at most 20 characters, virtio-blk's limit).
#[derive(Debug, Clone)]
pub struct NamedDrive {
    pub serial: String,
    pub path: PathBuf,
    pub writable: bool,
}

impl Config {
    pub fn new(disk: impl Into<PathBuf>, boot: Boot) -> Config {
        Config {
            disk: disk.into(),
            boot,
            memory_mib: 2048,
            cpus: 2,
            log: None,
            nics: Vec::new(),
            fw_cfg: Vec::new(),
            drives: Vec::new(),
            rw_drives: Vec::new(),
            named_drives: Vec::new(),
            reboot: false,
        }
    }
}

/// `kvm` when KVM really works here, else `tcg`. `RKE2_QEMU_ACCEL=tcg|kvm` overrides.
///
/// KVM has been seen to be present but broken on these machines (guests hang or crawl), so
/// it is only used when a tiny guest (SeaBIOS finding nothing to boot and exiting) finishes
/// under KVM within a few seconds and faster than under TCG.
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        match std::env::var("RKE2_QEMU_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return "tcg";
        }
        match (probe_accel("kvm"), probe_accel("tcg")) {
            (Some(k), Some(t)) if k <= t => "kvm",
            (Some(_), None) => "kvm",
            _ => "tcg",
        }
    })
}

/// Time a firmware-only guest takes to start, find no boot device and exit; None when it
/// fails or takes longer than 5 s.
fn probe_accel(accel: &str) -> Option<Duration> {
    let start = Instant::now();
    let mut child = Command::new(QEMU)
        .args([
            "-accel",
            accel,
            "-M",
            "pc",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args([
            "-no-reboot",
            "-boot",
            "strict=on,reboot-timeout=0",
            "-serial",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success().then(|| start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    console: Arc<Mutex<Console>>,
    started: Instant,
    _vars: Option<tempfile::TempDir>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("pid", &self.child.id()).finish()
    }
}

/// The QEMU command line for `cfg` (without the OVMF vars copy path, passed separately).
pub fn command(cfg: &Config, vars: Option<&Path>) -> Command {
    let mut c = Command::new(QEMU);
    let accel = accel();
    let machine = match cfg.boot {
        // Secure Boot variables are only protected from the OS with SMM.
        Boot::SecureUefi { .. } => "q35,smm=on",
        _ => "q35",
    };
    c.args([
        "-accel",
        accel,
        "-M",
        machine,
        "-m",
        &cfg.memory_mib.to_string(),
    ]);
    c.args(["-smp", &cfg.cpus.to_string()]);
    if accel == "kvm" {
        c.args(["-cpu", "host"]);
    } else {
        // A CPU model with SSE4.2/AES so the kernel's accelerated crypto and FIPS self-tests
        // behave as on real hardware.
        c.args(["-cpu", "max"]);
    }
    c.args(["-nodefaults", "-display", "none", "-serial", "stdio"]);
    // A guest reboot ends QEMU unless the test wants the machine to come back up (the firmware
    // then boots what its variables say: BootNext, BootOrder).
    if !cfg.reboot {
        c.arg("-no-reboot");
    }
    if cfg.nics.is_empty() {
        c.args(["-nic", "none"]);
    }
    let mut boot_nic = None;
    for (i, nic) in cfg.nics.iter().enumerate() {
        let netdev = match &nic.net {
            Net::Hub { hub, local } => {
                format!("socket,id=net{i},udp={hub},localaddr={local}")
            }
            Net::User { forwards } => {
                let mut n = format!("user,id=net{i},restrict=on,net=10.0.2.0/24");
                if let (Boot::Pxe { tftp, bootfile }, None) = (&cfg.boot, boot_nic) {
                    n.push_str(&format!(",tftp={},bootfile={bootfile}", tftp.display()));
                    boot_nic = Some(i);
                }
                for (guest, host) in forwards {
                    n.push_str(&format!(
                        ",guestfwd=tcp:{guest}-cmd:nc -N {} {}",
                        host.ip(),
                        host.port()
                    ));
                }
                n
            }
        };
        c.arg("-netdev").arg(netdev);
        let bootindex = if boot_nic == Some(i) {
            ",bootindex=0"
        } else {
            ""
        };
        c.arg("-device").arg(format!(
            "virtio-net-pci,netdev=net{i},mac={}{bootindex}",
            nic.mac
        ));
    }
    for (name, file) in &cfg.fw_cfg {
        c.arg("-fw_cfg")
            .arg(format!("name={name},file={}", file.display()));
    }
    match cfg.boot {
        Boot::Pxe { .. } => {}
        Boot::Cdrom => {
            c.arg("-drive").arg(format!(
                "file={},format={},if=none,id=cd0,media=cdrom,readonly=on",
                cfg.disk.display(),
                disk_format(&cfg.disk)
            ));
            c.args(["-device", "ide-cd,drive=cd0,bootindex=0"]);
        }
        _ => {
            c.arg("-drive").arg(format!(
                "file={},format={},if=virtio,cache=unsafe",
                cfg.disk.display(),
                disk_format(&cfg.disk)
            ));
        }
    }
    for d in &cfg.drives {
        c.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            d.display()
        ));
    }
    for d in &cfg.rw_drives {
        c.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            d.display()
        ));
    }
    // `serial` is a property of the virtio-blk device, not of the drive.
    for (i, d) in cfg.named_drives.iter().enumerate() {
        let access = if d.writable {
            "cache=unsafe"
        } else {
            "readonly=on"
        };
        c.arg("-drive").arg(format!(
            "file={},format={},if=none,id=named{i},{access}",
            d.path.display(),
            disk_format(&d.path)
        ));
        c.arg("-device")
            .arg(format!("virtio-blk-pci,drive=named{i},serial={}", d.serial));
    }
    match &cfg.boot {
        Boot::Uefi | Boot::SecureUefi { .. } | Boot::Pxe { .. } | Boot::Cdrom => {
            let code = if !matches!(cfg.boot, Boot::SecureUefi { .. }) {
                OVMF_CODE
            } else {
                c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                OVMF_CODE_SECBOOT
            };
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ));
            if let Some(v) = vars {
                c.arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", v.display()));
            }
        }
        Boot::Direct {
            kernel,
            initrd,
            cmdline,
        } => {
            c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
            c.arg("-append").arg(cmdline);
        }
    }
    c
}

impl Vm {
    pub fn start(cfg: &Config) -> Result<Vm, VmError> {
        let (vars_dir, vars) = match &cfg.boot {
            Boot::Uefi | Boot::SecureUefi { .. } | Boot::Pxe { .. } | Boot::Cdrom => {
                let src = match &cfg.boot {
                    Boot::SecureUefi { vars } => vars.as_path(),
                    _ => Path::new(OVMF_VARS),
                };
                let d = tempfile::tempdir().map_err(|e| VmError::Vars(e, PathBuf::from("tmp")))?;
                let v = d.path().join("OVMF_VARS.fd");
                std::fs::copy(src, &v).map_err(|e| VmError::Vars(e, v.clone()))?;
                (Some(d), Some(v))
            }
            Boot::Direct { .. } => (None, None),
        };
        let mut child = command(cfg, vars.as_deref())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(VmError::Spawn)?;
        let started = Instant::now();
        let console = Arc::new(Mutex::new(Console::default()));
        let mut log = cfg.log.as_ref().and_then(|p| std::fs::File::create(p).ok());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            let mut log = log.as_mut().and_then(|f| f.try_clone().ok());
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Some(f) = log.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                    if let Ok(mut c) = console.lock() {
                        c.bytes.extend_from_slice(&buf[..n]);
                        let end = c.bytes.len();
                        c.arrivals.push((end, started.elapsed()));
                    }
                }
            });
        }
        Ok(Vm {
            child,
            console,
            started,
            _vars: vars_dir,
            status: None,
        })
    }

    /// Everything the console printed so far.
    /// The VM's own copy of the UEFI variable store (what the firmware wrote survives the VM
    /// until it is dropped).
    pub fn vars(&self) -> Option<PathBuf> {
        self._vars.as_ref().map(|d| d.path().join("OVMF_VARS.fd"))
    }

    pub fn console(&self) -> String {
        let c = self
            .console
            .lock()
            .map(|c| c.bytes.clone())
            .unwrap_or_default();
        String::from_utf8_lossy(&c).into_owned()
    }

    /// When (since QEMU started) the console first showed `marker`, as recorded by the reader
    /// thread when the bytes arrived, so it is exact however late the test looks.
    pub fn seen_at(&self, marker: &str) -> Option<Duration> {
        let c = self.console.lock().ok()?;
        let end = find(&c.bytes, marker.as_bytes())? + marker.len();
        let i = c.arrivals.partition_point(|(e, _)| *e < end);
        c.arrivals.get(i).map(|(_, t)| *t)
    }

    /// When (since QEMU started) the console showed `marker` for the first time after `after`
    /// (a later boot of the same machine).
    pub fn seen_after(&self, marker: &str, after: Duration) -> Option<Duration> {
        let c = self.console.lock().ok()?;
        let mut from = 0;
        while let Some(i) = find(&c.bytes[from..], marker.as_bytes()) {
            let end = from + i + marker.len();
            let k = c.arrivals.partition_point(|(e, _)| *e < end);
            match c.arrivals.get(k) {
                Some((_, t)) if *t > after => return Some(*t),
                Some(_) => from = end,
                None => return None,
            }
        }
        None
    }

    /// Kills QEMU at once: a power cut (nothing the guest has not written reaches the disk).
    pub fn power_cut(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// The last [`TAIL_LINES`] console lines.
    pub fn tail(&self) -> String {
        tail(&self.console(), TAIL_LINES)
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until the console contains `marker`; fails early when QEMU exits or any of
    /// `forbidden` appears. Returns the time since start.
    pub fn wait_for(
        &mut self,
        marker: &str,
        forbidden: &[&str],
        timeout: Duration,
    ) -> Result<Duration, VmError> {
        let start = Instant::now();
        loop {
            let text = self.console();
            if text.contains(marker) {
                return Ok(self.elapsed());
            }
            if let Some(bad) = forbidden.iter().find(|f| text.contains(**f)) {
                return Err(VmError::Forbidden {
                    what: marker.into(),
                    bad: bad.to_string(),
                    tail: tail(&text, TAIL_LINES),
                });
            }
            if let Some(st) = self.exited() {
                std::thread::sleep(Duration::from_millis(200)); // let readers drain
                let text = self.console();
                if text.contains(marker) {
                    return Ok(self.elapsed());
                }
                return Err(VmError::Exited {
                    what: marker.into(),
                    status: st.to_string(),
                    tail: tail(&text, TAIL_LINES),
                });
            }
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    what: marker.into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Vm::wait_for`] `marker`, then the whole first console line that contains it (given
    /// two seconds to be written out).
    pub fn wait_line(
        &mut self,
        marker: &str,
        forbidden: &[&str],
        timeout: Duration,
    ) -> Result<String, VmError> {
        self.wait_for(marker, forbidden, timeout)?;
        std::thread::sleep(Duration::from_secs(2));
        let console = self.console();
        Ok(console
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_default()
            .to_string())
    }

    /// Waits for QEMU to exit (guest power-off or reboot with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.exited() {
                std::thread::sleep(Duration::from_millis(200));
                return Ok(st);
            }
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    what: "QEMU to exit".into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Console bytes and when they arrived: (end offset, time since start) per read.
#[derive(Default)]
struct Console {
    bytes: Vec<u8>,
    arrivals: Vec<(usize, Duration)>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The image format QEMU is told for `disk`: a `.qcow2` file is an overlay or a qcow2 output,
/// anything else raw (never left to probing, which QEMU warns about and which would let a
/// guest-written header change how the file is read).
pub fn disk_format(disk: &std::path::Path) -> &'static str {
    if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn secure_boot_uses_smm_and_secure_pflash() {
        let cfg = Config::new(
            "/d.img",
            Boot::SecureUefi {
                vars: OVMF_VARS_SNAKEOIL.into(),
            },
        );
        let joined = command(&cfg, Some(Path::new("/v.fd")))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-M q35,smm=on"), "{joined}");
        assert!(joined.contains("-global driver=cfi.pflash01,property=secure,value=on"));
        assert!(joined.contains(&format!("readonly=on,file={OVMF_CODE_SECBOOT}")));
        assert!(joined.contains("unit=1,file=/v.fd"));
    }

    #[test]
    fn command_line_uses_pflash_copy_for_uefi() {
        let cfg = Config::new("/d.img", Boot::Uefi);
        let args: Vec<String> = command(&cfg, Some(Path::new("/v.fd")))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains(
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(joined.contains("unit=1,file=/v.fd"));
        assert!(joined.contains("-nic none"));
        assert!(joined.contains("file=/d.img,format=raw,if=virtio"));
    }

    #[test]
    fn networks_stay_on_loopback_and_user_net_is_restricted() {
        let mut cfg = Config::new("/d.img", Boot::Uefi);
        cfg.nics = vec![
            Nic {
                mac: "52:54:00:00:00:01".into(),
                net: Net::Hub {
                    hub: "127.0.0.1:4000".parse().unwrap(),
                    local: "127.0.0.1:4001".parse().unwrap(),
                },
            },
            Nic {
                mac: "52:54:00:00:00:02".into(),
                net: Net::User {
                    forwards: vec![(
                        "10.0.2.100:9345".parse().unwrap(),
                        "127.0.0.1:5000".parse().unwrap(),
                    )],
                },
            },
        ];
        cfg.fw_cfg = vec![("opt/x".into(), PathBuf::from("/c.yaml"))];
        let joined = command(&cfg, None)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!joined.contains("-nic none"));
        assert!(joined.contains("socket,id=net0,udp=127.0.0.1:4000,localaddr=127.0.0.1:4001"));
        assert!(joined.contains(
            "user,id=net1,restrict=on,net=10.0.2.0/24,guestfwd=tcp:10.0.2.100:9345-cmd:nc -N 127.0.0.1 5000"
        ));
        assert!(joined.contains("virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02"));
        assert!(joined.contains("-fw_cfg name=opt/x,file=/c.yaml"));
    }

    #[test]
    fn named_drives_carry_their_serial_on_the_device() {
        let mut cfg = Config::new("/d.img", Boot::Uefi);
        cfg.named_drives = vec![
            NamedDrive {
                serial: "v2".into(),
                path: "/b.update".into(),
                writable: false,
            },
            NamedDrive {
                serial: "scratch".into(),
                path: "/s.qcow2".into(),
                writable: true,
            },
        ];
        let joined = command(&cfg, None)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains(
            "-drive file=/b.update,format=raw,if=none,id=named0,readonly=on -device virtio-blk-pci,drive=named0,serial=v2"
        ), "{joined}");
        assert!(joined.contains(
            "-drive file=/s.qcow2,format=qcow2,if=none,id=named1,cache=unsafe -device virtio-blk-pci,drive=named1,serial=scratch"
        ), "{joined}");
    }

    #[test]
    fn cdrom_boot_attaches_the_disk_as_a_read_only_cd_first() {
        let cfg = Config::new("/x.iso", Boot::Cdrom);
        let joined = command(&cfg, Some(Path::new("/v.fd")))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined.contains("-drive file=/x.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on -device ide-cd,drive=cd0,bootindex=0"),
            "{joined}"
        );
        assert!(!joined.contains("if=virtio"), "{joined}");
        assert!(joined.contains(&format!("readonly=on,file={OVMF_CODE}")));
    }

    #[test]
    fn pxe_is_diskless_and_boots_from_the_user_nic() {
        let mut cfg = Config::new(
            "/unused.img",
            Boot::Pxe {
                tftp: "/srv/tftp".into(),
                bootfile: "ipxe.efi".into(),
            },
        );
        cfg.nics = vec![Nic {
            mac: "52:54:00:00:00:03".into(),
            net: Net::User {
                forwards: vec![(
                    "10.0.2.100:80".parse().unwrap(),
                    "127.0.0.1:5001".parse().unwrap(),
                )],
            },
        }];
        let joined = command(&cfg, Some(Path::new("/v.fd")))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!joined.contains("/unused.img"), "{joined}");
        assert!(joined.contains(
            "restrict=on,net=10.0.2.0/24,tftp=/srv/tftp,bootfile=ipxe.efi,guestfwd=tcp:10.0.2.100:80-cmd:nc -N 127.0.0.1 5001"
        ), "{joined}");
        assert!(joined.contains("mac=52:54:00:00:00:03,bootindex=0"));
        assert!(joined.contains(&format!("readonly=on,file={OVMF_CODE}")));
    }
}
