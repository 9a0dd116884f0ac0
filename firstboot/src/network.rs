//! Static node addressing: the `network` section of a native configuration, checked, resolved
//! for this machine, rendered as a systemd-networkd `.network` file and made live with
//! a restart of systemd-networkd.
//!
//! Machines in a disconnected datacenter (and the cluster boot test) have no DHCP server: each
//! node must have its address before the join preflight reaches the initializer.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dialects::native::NetworkSpec;
use crate::identity::{normalize_mac, Identity};

/// The file the System phase writes. `10-` sorts before the image's `90-` DHCP default, and
/// networkd applies the first matching file only, so this one wins for its link.
pub const NETWORK_FILE: &str = "/etc/systemd/network/10-rke2-firstboot.network";
/// Written when `dns`/`search` are set: the image runs no systemd-resolved, so networkd's `DNS=`
/// alone would reach no resolver.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
    #[error("reading {path}: {source}")]
    Sysfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no network interface has MAC {mac} (found: {found}); check network.interface or the \
         machine's NICs"
    )]
    NoSuchMac { mac: String, found: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// The link the configuration goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    Mac(String),
    Name(String),
}

impl Link {
    /// Reads `interface`: a MAC address or an interface name.
    pub fn parse(key: &str, s: &str) -> Result<Link, NetworkError> {
        if let Some(m) = normalize_mac(s) {
            return Ok(Link::Mac(m));
        }
        if valid_ifname(s) {
            return Ok(Link::Name(s.to_string()));
        }
        Err(invalid(
            key,
            format!(
                "{s:?} is neither a MAC address (52:54:00:12:34:56) nor an interface name (eth0, \
                 enp0s3: at most {IFNAME_MAX} characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// As the kernel's `dev_valid_name`, restricted to printable ASCII.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= IFNAME_MAX
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// An address with its prefix length (`10.0.0.11/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        // Digits only: `u8::from_str` would also take "+24".
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }
}

/// This machine's resolved network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub link: Link,
    pub addresses: Vec<Cidr>,
    pub gateways: Vec<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
}

fn usable(ip: &IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast())
}

fn ip(key: &str, s: &str, what: &str) -> Result<IpAddr, NetworkError> {
    match s.trim().parse::<IpAddr>() {
        Ok(a) if usable(&a) => Ok(a),
        Ok(_) => Err(invalid(
            key,
            format!("{s:?} cannot be {what} (unspecified or multicast)"),
        )),
        Err(_) => Err(invalid(
            key,
            format!("{s:?} is not an IP address (e.g. 10.0.0.1 or fd00::1)"),
        )),
    }
}

/// Checks a `network` section (everything but the interface default, which depends on the
/// node's match). `key` is its path: `network` or `nodes[2].network`.
pub fn check(key: &str, spec: &NetworkSpec) -> Result<(), NetworkError> {
    if let Some(i) = &spec.interface {
        Link::parse(&format!("{key}.interface"), i)?;
    }
    settings(key, spec).map(|_| ())
}

/// Addresses, gateways and DNS servers of a section, checked.
type Settings = (Vec<Cidr>, Vec<IpAddr>, Vec<IpAddr>);

fn settings(key: &str, spec: &NetworkSpec) -> Result<Settings, NetworkError> {
    if spec.addresses.is_empty() {
        return Err(invalid(
            format!("{key}.addresses"),
            "at least one address/prefix is required (e.g. [10.0.0.11/24])",
        ));
    }
    let mut addresses = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        let k = format!("{key}.addresses[{i}]");
        let c = Cidr::parse(a).ok_or_else(|| {
            invalid(
                &k,
                format!(
                    "{a:?} is not an address/prefix; write it like 10.0.0.11/24 or fd00::11/64"
                ),
            )
        })?;
        if !usable(&c.addr) || c.addr.is_loopback() {
            return Err(invalid(
                &k,
                format!("{a:?} cannot be a node address (unspecified, multicast or loopback)"),
            ));
        }
        if !seen.insert(c.addr) {
            return Err(invalid(&k, format!("{} is listed twice", c.addr)));
        }
        addresses.push(c);
    }
    let mut gateways = Vec::new();
    for (i, g) in spec
        .gateway
        .as_ref()
        .map(|g| g.to_vec())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let k = match &spec.gateway {
            Some(crate::dialects::native::OneOrMany::Many(_)) => format!("{key}.gateway[{i}]"),
            _ => format!("{key}.gateway"),
        };
        let g = ip(&k, g, "a gateway")?;
        if gateways.iter().any(|x: &IpAddr| x.is_ipv4() == g.is_ipv4()) {
            return Err(invalid(
                &k,
                "at most one IPv4 and one IPv6 gateway; remove the extra one",
            ));
        }
        if !addresses.iter().any(|a| a.addr.is_ipv4() == g.is_ipv4()) {
            return Err(invalid(
                &k,
                format!(
                    "{g} is an {} gateway but no {} address is configured; add one to addresses",
                    family(&g),
                    family(&g)
                ),
            ));
        }
        gateways.push(g);
    }
    let dns = spec
        .dns
        .iter()
        .enumerate()
        .map(|(i, d)| ip(&format!("{key}.dns[{i}]"), d, "a DNS server"))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, s) in spec.search.iter().enumerate() {
        let d = s.strip_suffix('.').unwrap_or(s);
        if !crate::plan::valid_hostname(d) {
            return Err(invalid(
                format!("{key}.search[{i}]"),
                format!("{s:?} is not a domain name (e.g. example.internal)"),
            ));
        }
    }
    if let Some(m) = spec.mtu {
        let min = if addresses.iter().any(|a| a.addr.is_ipv6()) {
            1280
        } else {
            68
        };
        if !(min..=65535).contains(&m) {
            return Err(invalid(
                format!("{key}.mtu"),
                format!("{m} is out of range; use {min}..65535 (1500 for plain Ethernet, 9000 for jumbo frames)"),
            ));
        }
    }
    Ok((addresses, gateways, dns))
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Resolves a checked `network` section for this machine. `macs` is the node's `match.mac`
/// list (empty for a single-node configuration): without `interface`, the first listed MAC
/// this machine has gets the configuration.
pub fn resolve(
    key: &str,
    spec: &NetworkSpec,
    macs: &[String],
    id: &Identity,
) -> Result<NetworkPlan, NetworkError> {
    let (addresses, gateways, dns) = settings(key, spec)?;
    let link = match &spec.interface {
        Some(i) => Link::parse(&format!("{key}.interface"), i)?,
        None if macs.is_empty() => return Err(interface_required(key)),
        None => {
            let mac = macs
                .iter()
                .filter_map(|m| normalize_mac(m))
                .find(|m| id.macs.contains(m))
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.interface"),
                        format!(
                            "not set, and none of this node's match.mac ({}) is on this machine \
                             (mac=[{}]); set network.interface to the MAC or name of the \
                             interface to configure",
                            macs.join(", "),
                            id.macs.iter().cloned().collect::<Vec<_>>().join(",")
                        ),
                    )
                })?;
            Link::Mac(mac)
        }
    };
    Ok(NetworkPlan {
        link,
        addresses,
        gateways,
        dns,
        search: spec.search.clone(),
        mtu: spec.mtu,
    })
}

/// The error for a `network` without `interface` and no MAC to default to.
pub fn interface_required(key: &str) -> NetworkError {
    let why = if key == "network" {
        "a single-node configuration has no match.mac to default to"
    } else {
        "this node is not matched by mac, so there is no MAC to default to"
    };
    invalid(
        format!("{key}.interface"),
        format!(
            "required: {why}; set it to the interface's MAC (52:54:00:12:34:56) or name (eth0)"
        ),
    )
}

/// The systemd-networkd `.network` file for a plan (deterministic: the configuration's order).
pub fn networkd_file(p: &NetworkPlan) -> String {
    let mut s = String::from(
        "# Written by rke2-firstboot from the node configuration's network section.\n[Match]\n",
    );
    match &p.link {
        // A VLAN, bond or bridge may carry the same MAC; only the physical link is meant.
        Link::Mac(m) => s.push_str(&format!("MACAddress={m}\nKind=!*\n")),
        Link::Name(n) => s.push_str(&format!("Name={n}\n")),
    }
    if let Some(m) = p.mtu {
        s.push_str(&format!("\n[Link]\nMTUBytes={m}\n"));
    }
    s.push_str("\n[Network]\nDHCP=no\n");
    // Static addressing only: no router advertisements, and no IPv4 link-local addresses. IPv6
    // keeps its link-local address when IPv6 is configured: neighbour discovery and MLD need it.
    let v6 = p.addresses.iter().any(|a| a.addr.is_ipv6());
    s.push_str(if v6 {
        "LinkLocalAddressing=ipv6\n"
    } else {
        "LinkLocalAddressing=no\n"
    });
    s.push_str("IPv6AcceptRA=no\n");
    for a in &p.addresses {
        s.push_str(&format!("Address={a}\n"));
    }
    for g in &p.gateways {
        s.push_str(&format!("Gateway={g}\n"));
    }
    for d in &p.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    if !p.search.is_empty() {
        s.push_str(&format!("Domains={}\n", p.search.join(" ")));
    }
    s
}

/// `/etc/resolv.conf` for a plan with `dns` or `search` (None otherwise).
pub fn resolv_conf(p: &NetworkPlan) -> Option<String> {
    if p.dns.is_empty() && p.search.is_empty() {
        return None;
    }
    let mut s = String::from(
        "# Written by rke2-firstboot from the node configuration (network.dns, network.search).\n",
    );
    for d in &p.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if !p.search.is_empty() {
        s.push_str(&format!("search {}\n", p.search.join(" ")));
    }
    Some(s)
}

/// The name of the interface with `mac`, from `<sys>/class/net/*/address`. Physical devices
/// (those with a `device` link) win over virtual ones that copied the MAC (VLANs, bonds);
/// among equals the first name in sorted order.
pub fn ifname_for_mac(sys: &Path, mac: &str) -> Result<Option<String>, NetworkError> {
    let want = normalize_mac(mac)
        .ok_or_else(|| invalid("interface", format!("{mac:?} is not a MAC address")))?;
    let dir = sys.join("class/net");
    let rd = fs::read_dir(&dir).map_err(|source| NetworkError::Sysfs {
        path: dir.display().to_string(),
        source,
    })?;
    let mut hits: Vec<(bool, String)> = Vec::new();
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Ok(addr) = fs::read_to_string(e.path().join("address")) else {
            continue;
        };
        if normalize_mac(&addr).as_deref() == Some(want.as_str()) {
            let virt = e.path().join("device").symlink_metadata().is_err();
            hits.push((virt, name));
        }
    }
    hits.sort();
    Ok(hits.into_iter().next().map(|(_, n)| n))
}

/// Every `name=mac` in `<sys>/class/net`, for error messages.
fn interfaces(sys: &Path) -> String {
    let mut v: Vec<String> = fs::read_dir(sys.join("class/net"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().into_string().ok()?;
                    let a = fs::read_to_string(e.path().join("address")).ok()?;
                    Some(format!("{n}={}", a.trim()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The interface name a plan applies to on this machine.
pub fn ifname(sys: &Path, p: &NetworkPlan) -> Result<String, NetworkError> {
    match &p.link {
        Link::Name(n) => Ok(n.clone()),
        Link::Mac(m) => ifname_for_mac(sys, m)?.ok_or_else(|| NetworkError::NoSuchMac {
            mac: m.clone(),
            found: interfaces(sys),
        }),
    }
}

/// One line for the status: `10.0.0.12/24 on eth0 (52:54:00:00:01:02)`.
pub fn describe(p: &NetworkPlan, ifname: &str) -> String {
    let addrs: Vec<String> = p.addresses.iter().map(Cidr::to_string).collect();
    match &p.link {
        Link::Mac(m) => format!("{} on {ifname} ({m})", addrs.join(", ")),
        Link::Name(_) => format!("{} on {ifname}", addrs.join(", ")),
    }
}

/// Runs a command; a failure names the command line, its exit status and its stderr.
pub fn run(args: &[&str]) -> Result<String, NetworkError> {
    let cmd = args.join(" ");
    let (prog, rest) = args.split_first().ok_or_else(|| NetworkError::Command {
        cmd: cmd.clone(),
        status: "not run".into(),
        stderr: "empty command".into(),
    })?;
    let o = Command::new(prog)
        .args(rest)
        .output()
        .map_err(|e| NetworkError::Command {
            cmd: cmd.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if !o.status.success() {
        return Err(NetworkError::Command {
            cmd,
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Addresses of `p` missing from `ip -o addr show dev IF` output.
pub fn missing_addresses(p: &NetworkPlan, ip_output: &str) -> Vec<Cidr> {
    let have: BTreeSet<Cidr> = ip_output
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet" || *w == "inet6")?;
            Cidr::parse(it.next()?)
        })
        .collect();
    p.addresses
        .iter()
        .filter(|a| !have.contains(a))
        .copied()
        .collect()
}

/// Makes the written `.network` file live: `systemctl restart systemd-networkd.service` (it
/// reads every `.network` file when it starts), then waits up to `wait` for the addresses to show in `ip -o addr` (the join preflight
/// retries anyway, so a slow link is reported, not an error). Returns the interface name.
pub fn apply(
    sys: &Path,
    p: &NetworkPlan,
    wait: Duration,
    status: &mut dyn FnMut(&str),
) -> Result<String, NetworkError> {
    apply_with(sys, p, wait, status, &mut |args| run(args))
}

/// [`apply`] with the command runner passed in (tests record the commands instead).
pub fn apply_with(
    sys: &Path,
    p: &NetworkPlan,
    wait: Duration,
    status: &mut dyn FnMut(&str),
    run: &mut dyn FnMut(&[&str]) -> Result<String, NetworkError>,
) -> Result<String, NetworkError> {
    let ifname = ifname(sys, p)?;
    // Not `networkctl reload`/`reconfigure`: they are D-Bus calls, and Debian's policy denies
    // systemd-networkd's reply to a service domain (`send_msg` to initrc_t), so they time out
    // under enforcing SELinux. A restart goes through PID 1; on first boot nothing depends on
    // the links yet, so restarting them costs nothing.
    run(&["systemctl", "restart", "systemd-networkd.service"])?;
    let start = Instant::now();
    loop {
        let missing = match run(&["ip", "-o", "addr", "show", "dev", &ifname]) {
            Ok(out) => missing_addresses(p, &out),
            // No `ip`: nothing to wait with; the preflight retries.
            Err(_) => return Ok(ifname),
        };
        if missing.is_empty() {
            return Ok(ifname);
        }
        if start.elapsed() >= wait {
            let m: Vec<String> = missing.iter().map(Cidr::to_string).collect();
            status(&format!(
                "warning: network: {} not up on {ifname} after {} s; continuing (the join \
                 preflight retries)",
                m.join(", "),
                wait.as_secs()
            ));
            return Ok(ifname);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            Cidr::parse("10.0.0.11/24").unwrap().to_string(),
            "10.0.0.11/24"
        );
        assert_eq!(
            Cidr::parse("FD00:0::11/64").unwrap().to_string(),
            "fd00::11/64"
        );
        for bad in [
            "10.0.0.300/24",
            "10.0.0.1",
            "10.0.0.1/33",
            "fd00::1/129",
            "10.0.0.1/+4",
            "10.0.0.1/",
            "x/24",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(valid_ifname("eth0") && valid_ifname("enp0s3") && valid_ifname("bond0.100"));
        for bad in ["", ".", "..", "a/b", "eth0:1", "eth 0", "abcdefghijklmnop"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
        assert_eq!(
            Link::parse("k", "52-54-00-AA-BB-CC").unwrap(),
            Link::Mac("52:54:00:aa:bb:cc".into())
        );
    }

    /// `<sys>/class/net/<name>/address` (+ `device` for physical NICs), as the kernel shows it.
    fn fake_sysfs(links: &[(&str, &str, bool)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (name, mac, physical) in links {
            let d = t.path().join("class/net").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            if *physical {
                std::os::unix::fs::symlink(
                    "../../../devices/pci0000:00/0000:00:03.0",
                    d.join("device"),
                )
                .unwrap();
            }
        }
        t
    }

    #[test]
    fn mac_to_interface_name_from_sysfs() {
        let sys = fake_sysfs(&[
            ("lo", "00:00:00:00:00:00", false),
            ("eth0", "52:54:00:00:01:01", true),
            ("eth1", "52:54:00:00:01:02", true),
            // A VLAN on eth0 sorts first and carries the same MAC: the NIC still wins.
            ("a.100", "52:54:00:00:01:01", false),
        ]);
        let p = sys.path();
        assert_eq!(
            ifname_for_mac(p, "52:54:00:00:01:01").unwrap().as_deref(),
            Some("eth0")
        );
        assert_eq!(
            ifname_for_mac(p, "52-54-00-00-01-02").unwrap().as_deref(),
            Some("eth1")
        );
        assert_eq!(ifname_for_mac(p, "52:54:00:00:09:09").unwrap(), None);
        let plan = |link| NetworkPlan {
            link,
            addresses: vec![Cidr::parse("10.0.0.12/24").unwrap()],
            gateways: vec![],
            dns: vec![],
            search: vec![],
            mtu: None,
        };
        let e = ifname(p, &plan(Link::Mac("52:54:00:00:09:09".into())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no network interface has MAC 52:54:00:00:09:09")
                && e.contains("eth0=52:54:00:00:01:01, eth1=52:54:00:00:01:02"),
            "{e}"
        );
        // A name is used as given, whether or not sysfs has it yet.
        assert_eq!(
            ifname(p, &plan(Link::Name("bond0".into()))).unwrap(),
            "bond0"
        );
        // No sysfs class/net at all: an error naming the path.
        let empty = tempfile::tempdir().unwrap();
        assert!(ifname_for_mac(empty.path(), "52:54:00:00:01:01")
            .unwrap_err()
            .to_string()
            .contains("class/net"));
    }

    #[test]
    fn apply_restarts_networkd_resolves_the_link_and_waits_for_the_address() {
        let sys = fake_sysfs(&[("ens3", "52:54:00:00:01:02", true)]);
        let p = NetworkPlan {
            link: Link::Mac("52:54:00:00:01:02".into()),
            addresses: vec![Cidr::parse("10.0.0.12/24").unwrap()],
            gateways: vec![],
            dns: vec![],
            search: vec![],
            mtu: None,
        };
        let mut calls = Vec::new();
        let mut log = Vec::new();
        let got = apply_with(
            sys.path(),
            &p,
            Duration::from_secs(20),
            &mut |m| log.push(m.to_string()),
            &mut |a| {
                calls.push(a.join(" "));
                // The address shows up on the second look.
                let polls = calls.iter().filter(|c| c.starts_with("ip ")).count();
                Ok(if polls >= 2 {
                    "2: ens3    inet 10.0.0.12/24 brd 10.0.0.255 scope global ens3\n".into()
                } else {
                    String::new()
                })
            },
        )
        .unwrap();
        assert_eq!(got, "ens3");
        assert_eq!(
            calls,
            [
                "systemctl restart systemd-networkd.service",
                "ip -o addr show dev ens3",
                "ip -o addr show dev ens3"
            ]
        );
        assert!(log.is_empty(), "{log:?}");

        // The address never shows: a warning after the wait, not an error.
        let mut log = Vec::new();
        apply_with(
            sys.path(),
            &p,
            Duration::ZERO,
            &mut |m| log.push(m.to_string()),
            &mut |_| Ok(String::new()),
        )
        .unwrap();
        assert!(
            log.len() == 1 && log[0].contains("10.0.0.12/24 not up on ens3"),
            "{log:?}"
        );

        // A failing command stops the apply with its error.
        let e = apply_with(sys.path(), &p, Duration::ZERO, &mut |_| {}, &mut |a| {
            Err(NetworkError::Command {
                cmd: a.join(" "),
                status: "exit status: 1".into(),
                stderr: "Job failed".into(),
            })
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "`systemctl restart systemd-networkd.service` failed (exit status: 1): Job failed"
        );
    }

    #[test]
    fn command_errors_name_the_command_and_its_stderr() {
        let e = run(&["sh", "-c", "echo no such link >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "`sh -c echo no such link >&2; exit 3` failed (exit status: 3): no such link"
        );
        let e = run(&["/nonexistent/networkctl", "reload"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`/nonexistent/networkctl reload` failed (could not start)"),
            "{e}"
        );
    }

    #[test]
    fn ip_output_is_compared_by_address() {
        let p = NetworkPlan {
            link: Link::Name("eth0".into()),
            addresses: vec![
                Cidr::parse("10.0.0.12/24").unwrap(),
                Cidr::parse("fd00::12/64").unwrap(),
            ],
            gateways: vec![],
            dns: vec![],
            search: vec![],
            mtu: None,
        };
        let out = "2: eth0    inet 10.0.0.12/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            missing_addresses(&p, out),
            vec![Cidr::parse("fd00::12/64").unwrap()]
        );
        let out = format!("{out}2: eth0    inet6 fd00:0:0::12/64 scope global tentative \\ ...\n");
        assert!(missing_addresses(&p, &out).is_empty());
        // The same address with another prefix is not the configured one.
        assert_eq!(
            missing_addresses(&p, "2: eth0 inet 10.0.0.12/16 scope global eth0\n").len(),
            2
        );
    }
}
