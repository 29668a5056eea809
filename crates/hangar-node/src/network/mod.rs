//! Machine networking: a network namespace, an address and a default-deny
//! firewall for every runc machine.
//!
//! How it works (runc makes the namespaces; links and addresses are
//! rtnetlink requests, the firewall is `nft`; no namespace code of our
//! own):
//! - Each machine owns one IPv4 address for its whole life, from the
//!   node's subnet. Addresses come in point-to-point pairs: pair `k` is
//!   `base + 2k` on the host's end of a veth and `base + 2k + 1` on the
//!   machine's `eth0`. runc makes the machine's network namespace at each
//!   start, owned by the machine's user namespace, and [`link::attach`]
//!   wires it between `runc create` and `runc start`; the kernel removes
//!   namespace and link when the container is deleted, so a stopped
//!   machine costs no kernel memory for networking. No bridge: machines
//!   share no link, so all of a machine's traffic goes through the host's
//!   IP stack, where the rules below see it.
//! - The whole subnet has an `unreachable` route on the host: an address
//!   whose machine is stopped fails at once and is never sent to the
//!   host's default gateway.
//! - The proxy and health checks dial `address:port`: every machine may
//!   listen on the same port, and a machine's port is no host-wide name.
//! - Addresses are handed out round-robin (a cursor that only moves
//!   forward), so a freed address comes back only after the whole pool
//!   has gone round: never to a new machine while a route could still
//!   name the old one.
//! - One nftables table per node (`inet hangar_<tag>`, rebuilt at start):
//!   - input: from a machine's link only replies and DNATed connections to
//!     granted resources are accepted; everything else addressed to the
//!     host (any of its addresses: API, proxy, admin port, Postgres, SSH)
//!     is dropped;
//!   - forward: nothing enters a machine but replies (so no machine
//!     reaches another); egress follows the [`Egress`] policy, and
//!     link-local (169.254.0.0/16) is always dropped;
//!   - resources: a machine reaches what its app declared at one virtual
//!     address, [`Network::service_ip`], port by port: a DNAT rule matches
//!     `(machine address, port)` in the `granted` set and sends it to the
//!     real endpoint (the `endpoints` map). Ungranted, the packet is
//!     forwarded to a private address and dropped.
//!
//! IPv6 is off on the host's ends of the veths, and the `inet` table drops
//! IPv6 from machines too: a machine's link-local address reaches nothing.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

mod link;
pub use link::attach;

/// Where `ip netns add` puts namespaces (an earlier layout kept machines'
/// namespaces there; see [`Network::remove_old_namespaces`]).
const NETNS_DIR: &str = "/run/netns";
/// Where the earlier layout kept machines' user namespaces.
const USERNS_DIR: &str = "/run/hangar-userns";
/// The interface name prefix of the host's ends of machines' veths.
const IFACE_PREFIX: &str = "hg";

/// Why networking could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command (`ip`, `nft`) failed; its stderr says why.
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A tool is missing or could not run.
    #[error("cannot run {tool}: {source} (install iproute2 and nftables)")]
    Tool {
        tool: &'static str,
        source: std::io::Error,
    },
    /// Every address of the subnet is taken.
    #[error("no free machine address left in {0}")]
    Exhausted(Subnet),
    /// A subnet flag that does not parse or fit.
    #[error("machine subnet {0:?}: {1}")]
    BadSubnet(String, &'static str),
    /// A resource endpoint that is not an IPv4 address Hangar can forward to.
    #[error("resource endpoint {0}: {1}")]
    BadEndpoint(String, String),
    /// Writing a sysctl.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// An IPv4 subnet machines' addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// Number of address pairs; pair 0 holds the service address.
    fn pairs(&self) -> u32 {
        (1u32 << (32 - self.prefix)) / 2
    }

    /// `base + offset`.
    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }

    /// The pair index of a machine address in this subnet.
    fn pair_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let off = u32::from(addr).checked_sub(u32::from(self.base))?;
        (off < (1u32 << (32 - self.prefix)) && off % 2 == 1 && off > 1).then_some(off / 2)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Subnet, NetworkError> {
        let bad = |why| NetworkError::BadSubnet(s.to_owned(), why);
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("write it as A.B.C.D/N"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 28"));
        }
        if !ip.is_private() {
            return Err(bad(
                "use a private range (10/8, 172.16/12, 192.168/16): machines' addresses must never be routable",
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(ip) & !mask != 0 {
            return Err(bad("the address has bits set past the prefix"));
        }
        Ok(Subnet { base: ip, prefix })
    }
}

/// What machines may reach outside the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Public addresses; private, shared, loopback, link-local and
    /// multicast ranges are dropped (the default).
    #[default]
    Public,
    /// Nothing outside the host.
    None,
}

impl FromStr for Egress {
    type Err = String;
    fn from_str(s: &str) -> Result<Egress, String> {
        match s {
            "public" => Ok(Egress::Public),
            "none" => Ok(Egress::None),
            other => Err(format!(
                "unknown egress policy {other:?}; use public or none"
            )),
        }
    }
}

/// Ranges a machine never reaches under [`Egress::Public`] (besides its
/// own node, which the input chain covers).
const NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Settings of machine networking on a node.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Machines' addresses come from here.
    pub subnet: Subnet,
    /// What machines may reach outside the host.
    pub egress: Egress,
    /// Tells this hangar's namespaces and table from another's on the
    /// same host (a few hex digits).
    pub tag: String,
}

/// A machine's network identity, as the driver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNet {
    /// The machine's address (its `eth0`).
    pub address: Ipv4Addr,
    /// The host's end of its link (its default gateway).
    pub gateway: Ipv4Addr,
    /// The host's interface name.
    pub host_iface: String,
}

/// Address allocation: which pairs are taken, and where the next search
/// starts.
#[derive(Debug, Default)]
struct Alloc {
    taken: HashSet<u32>,
    cursor: u32,
}

/// Resource exposure: which real endpoints have a port on the service
/// address, and which machines were granted which ports.
#[derive(Debug, Default)]
struct Grants {
    /// Real endpoint → port on the service address.
    ports: HashMap<SocketAddr, u16>,
    /// (machine address, service port) pairs in the `granted` set.
    granted: HashSet<(Ipv4Addr, u16)>,
}

/// Machine networking of one node.
#[derive(Debug)]
pub struct Network {
    cfg: NetworkConfig,
    alloc: Mutex<Alloc>,
    grants: Mutex<Grants>,
    /// Serialises `nft` changes so elements are added in a known order.
    nft: tokio::sync::Mutex<()>,
}

impl Network {
    /// Sets up the node's firewall table (replacing one a previous run
    /// left) and IP forwarding; `taken` are the addresses of machines that
    /// already exist.
    pub async fn setup(
        cfg: NetworkConfig,
        taken: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Result<Network, NetworkError> {
        let mut alloc = Alloc::default();
        for addr in taken {
            if let Some(pair) = cfg.subnet.pair_of(addr) {
                alloc.taken.insert(pair);
                alloc.cursor = alloc.cursor.max(pair);
            }
        }
        let net = Network {
            cfg,
            alloc: Mutex::new(alloc),
            grants: Mutex::new(Grants::default()),
            nft: tokio::sync::Mutex::new(()),
        };
        // Replace, not merge: `add table` makes `delete` succeed either way.
        let script = format!(
            "add table inet {t}\ndelete table inet {t}\n{}",
            net.ruleset(),
            t = net.table()
        );
        nft(&script).await?;
        // Addresses of stopped machines have no link: they fail here rather
        // than follow the default route out of the host.
        ip(
            &[],
            &format!("route replace unreachable {}\n", net.cfg.subnet),
        )
        .await?;
        if net.cfg.egress != Egress::None {
            write_sysctl(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
        }
        Ok(net)
    }

    /// The nftables table's name.
    pub fn table(&self) -> String {
        format!("hangar_{}", self.cfg.tag)
    }

    /// The address machines reach their declared resources at.
    pub fn service_ip(&self) -> Ipv4Addr {
        self.cfg.subnet.at(1)
    }

    /// The subnet machines' addresses come from.
    pub fn subnet(&self) -> Subnet {
        self.cfg.subnet
    }

    /// The whole table, as `nft -f` reads it (pure: unit-tested).
    pub fn ruleset(&self) -> String {
        let subnet = self.cfg.subnet;
        let svc = self.service_ip();
        let iface = format!("{IFACE_PREFIX}*");
        let mut s = String::new();
        let _ = writeln!(s, "table inet {} {{", self.table());
        s.push_str(
            "  map endpoints {\n    type inet_service : ipv4_addr . inet_service\n  }\n\
             \x20 set granted {\n    type ipv4_addr . inet_service\n  }\n",
        );
        // Resources: (machine, port) granted → the real endpoint.
        let _ = writeln!(
            s,
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip saddr {subnet} ip daddr {svc} ip saddr . tcp dport @granted dnat ip to tcp dport map @endpoints\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             ip saddr {subnet} oifname != \"{iface}\" masquerade\n  }}"
        );
        // Rules match this node's subnet, not every "hg*" link, so each
        // hangar on a host answers for its own machines (their source
        // addresses cannot be forged: no capabilities, strict rp_filter).
        // Nothing addressed to the host itself, but replies and granted
        // resources.
        let _ = writeln!(
            s,
            "  chain input {{\n    type filter hook input priority filter - 10; policy accept;\n    \
             ip saddr {subnet} ct state established,related accept\n    \
             ip saddr {subnet} ct status dnat accept\n    \
             ip saddr {subnet} drop\n    \
             iifname \"{iface}\" meta nfproto ipv6 drop\n  }}"
        );
        let mut forward = format!(
            "  chain forward {{\n    type filter hook forward priority filter - 10; policy accept;\n    \
             ip daddr {subnet} ct state established,related accept\n    \
             ip daddr {subnet} drop\n    \
             ip saddr {subnet} ct state established,related accept\n    \
             ip saddr {subnet} ct status dnat accept\n    \
             ip saddr {subnet} ip daddr 169.254.0.0/16 drop\n    \
             iifname \"{iface}\" meta nfproto ipv6 drop\n"
        );
        match self.cfg.egress {
            Egress::Public => {
                let _ = writeln!(
                    forward,
                    "    ip saddr {subnet} ip daddr {{ {} }} drop",
                    NON_PUBLIC.join(", ")
                );
            }
            Egress::None => {
                let _ = writeln!(forward, "    ip saddr {subnet} drop");
            }
        }
        forward.push_str("  }\n");
        s.push_str(&forward);
        s.push_str("}\n");
        s
    }

    /// The network identity of the machine at `address` (pure).
    pub fn machine_net(&self, address: Ipv4Addr) -> MachineNet {
        let gateway = Ipv4Addr::from(u32::from(address) - 1);
        MachineNet {
            address,
            gateway,
            host_iface: format!("{IFACE_PREFIX}{:08x}", u32::from(address)),
        }
    }

    /// Takes a free address.
    pub fn allocate(&self) -> Result<Ipv4Addr, NetworkError> {
        let mut alloc = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let pairs = self.cfg.subnet.pairs();
        for step in 1..pairs {
            // Pair 0 holds the service address; pairs run 1..pairs-1.
            let pair = (alloc.cursor + step - 1) % (pairs - 1) + 1;
            if alloc.taken.insert(pair) {
                alloc.cursor = pair;
                return Ok(self.cfg.subnet.at(pair * 2 + 1));
            }
        }
        Err(NetworkError::Exhausted(self.cfg.subnet))
    }

    /// Whether `address` is a machine address of this node's subnet.
    pub fn subnet_contains(&self, address: Ipv4Addr) -> bool {
        self.cfg.subnet.pair_of(address).is_some()
    }

    /// Gives an address back: one that never got a namespace, or (from
    /// [`Network::remove`]) one whose machine was destroyed and left every
    /// route.
    pub fn release(&self, address: Ipv4Addr) {
        if let Some(pair) = self.cfg.subnet.pair_of(address) {
            let mut alloc = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
            alloc.taken.remove(&pair);
        }
    }

    /// Removes the machine's grants and link (a link outlives its
    /// container only after a crash) and frees its address. Best effort:
    /// what is already gone is fine.
    pub async fn remove(&self, address: Ipv4Addr) {
        self.revoke(address).await;
        link::detach(&self.machine_net(address).host_iface).await;
        self.release(address);
    }

    /// Removes the namespaces an earlier layout kept for this node's
    /// machines as bind mounts (`/run/netns`, [`USERNS_DIR`]); a machine
    /// still running in one keeps it through its processes.
    pub async fn remove_old_namespaces(&self) {
        let prefix = format!("hangar-{}-", self.cfg.tag);
        for dir in [NETNS_DIR, USERNS_DIR] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let path = e.path();
                    tracing::info!(path = %path.display(), "removing a namespace of the earlier layout");
                    let _ = run_tool("umount", &["--lazy"], &[&path.to_string_lossy()], "").await;
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// Lets the machine at `address` reach `targets` (real endpoints) and
    /// returns, for each, where the machine connects instead: the service
    /// address and a port of it. Already granted pairs cost nothing.
    pub async fn grant(
        &self,
        address: Ipv4Addr,
        targets: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, NetworkError> {
        let _serial = self.nft.lock().await;
        let mut script = String::new();
        let mut out = Vec::with_capacity(targets.len());
        {
            let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            for target in targets {
                let SocketAddr::V4(v4) = target else {
                    return Err(NetworkError::BadEndpoint(
                        target.to_string(),
                        "machines reach resources over IPv4 only".into(),
                    ));
                };
                let port = match g.ports.get(target) {
                    Some(p) => *p,
                    None => {
                        let used: HashSet<u16> = g.ports.values().copied().collect();
                        let port = free_service_port(v4.port(), &used);
                        g.ports.insert(*target, port);
                        let _ = writeln!(
                            script,
                            "add element inet {t} endpoints {{ {port} : {} . {} }}",
                            v4.ip(),
                            v4.port(),
                            t = self.table()
                        );
                        port
                    }
                };
                if g.granted.insert((address, port)) {
                    let _ = writeln!(
                        script,
                        "add element inet {t} granted {{ {address} . {port} }}",
                        t = self.table()
                    );
                }
                out.push(SocketAddr::from((self.service_ip(), port)));
            }
        }
        if !script.is_empty()
            && let Err(e) = nft(&script).await
        {
            // Nothing is known to be in the table: forget it all for this
            // machine so a retry adds it again.
            let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            g.granted.retain(|(a, _)| *a != address);
            return Err(e);
        }
        Ok(out)
    }

    /// Withdraws every grant of the machine at `address`.
    async fn revoke(&self, address: Ipv4Addr) {
        let _serial = self.nft.lock().await;
        let ports: Vec<u16> = {
            let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            let ports = g
                .granted
                .iter()
                .filter(|(a, _)| *a == address)
                .map(|(_, p)| *p)
                .collect();
            g.granted.retain(|(a, _)| *a != address);
            ports
        };
        if ports.is_empty() {
            return;
        }
        let mut script = String::new();
        for port in ports {
            let _ = writeln!(
                script,
                "delete element inet {t} granted {{ {address} . {port} }}",
                t = self.table()
            );
        }
        if let Err(e) = nft(&script).await {
            tracing::warn!(%address, "withdrawing resource grants: {e}");
        }
    }

    /// Grants the machine at `address` each endpoint's target and tells
    /// each endpoint where the machine reaches it.
    pub async fn expose(
        &self,
        address: Ipv4Addr,
        endpoints: &mut [Endpoint<'_>],
    ) -> Result<(), NetworkError> {
        let targets: Vec<SocketAddr> = endpoints.iter().map(|e| e.target).collect();
        let seen = self.grant(address, &targets).await?;
        for (e, addr) in endpoints.iter_mut().zip(seen) {
            (e.rewrite)(addr);
        }
        Ok(())
    }
}

/// One place in a machine's configuration that names a server.
pub struct Endpoint<'a> {
    /// Where the connection really goes (DNAT's target): a gate on the
    /// host's loopback, or a server.
    pub target: SocketAddr,
    /// Called with where the machine connects instead.
    pub rewrite: Box<dyn FnMut(SocketAddr) + Send + 'a>,
}

impl Network {
    /// Where machines reach `target` (granted or not): the service address
    /// and its port, once some machine was granted it.
    pub fn seen_as(&self, target: SocketAddr) -> Option<SocketAddr> {
        let g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.ports
            .get(&target)
            .map(|port| SocketAddr::from((self.service_ip(), *port)))
    }
}

/// `port` itself when free on the service address, else the next free one
/// from 20000.
fn free_service_port(port: u16, used: &HashSet<u16>) -> u16 {
    if !used.contains(&port) {
        return port;
    }
    (20000..=u16::MAX)
        .find(|p| !used.contains(p))
        .unwrap_or(port)
}

/// The IPv4 socket address of a configured endpoint.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, NetworkError> {
    use std::net::ToSocketAddrs;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => Ok(SocketAddr::from((v4, port))),
            IpAddr::V6(v6) if v6.is_loopback() => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            IpAddr::V6(_) => Err(NetworkError::BadEndpoint(
                format!("[{host}]:{port}"),
                "machines reach resources over IPv4 only".into(),
            )),
        };
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| NetworkError::BadEndpoint(format!("{host}:{port}"), e.to_string()))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| {
            NetworkError::BadEndpoint(format!("{host}:{port}"), "no IPv4 address".into())
        })
}

/// Replaces the `host:port` of a URL (`scheme://[user[:pass]@]host:port/…`).
pub fn replace_authority(url: &str, to: SocketAddr) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rfind('@').map(|i| &authority[..=i]).unwrap_or("");
    format!("{scheme}://{userinfo}{to}{tail}")
}

/// The `host` and `port` of a URL, if it has both (or a default port).
pub fn url_host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let (_, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((hostport.to_owned(), default_port)),
    }
}

/// Runs `ip [args] -batch -` with `script` on stdin.
async fn ip(args: &[&str], script: &str) -> Result<(), NetworkError> {
    run_tool("ip", args, &["-batch", "-"], script).await
}

/// Runs `nft -f -` with `script` on stdin.
async fn nft(script: &str) -> Result<(), NetworkError> {
    run_tool("nft", &[], &["-f", "-"], script).await
}

async fn run_tool(
    tool: &'static str,
    args: &[&str],
    tail: &[&str],
    script: &str,
) -> Result<(), NetworkError> {
    let mut child = Command::new(tool)
        .args(args)
        .args(tail)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetworkError::Tool { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| NetworkError::Tool { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| NetworkError::Tool { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        let first = script.lines().next().unwrap_or_default();
        Err(NetworkError::Command {
            command: format!("{tool} {} ({first} …)", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), NetworkError> {
    std::fs::write(path, value).map_err(|source| NetworkError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str, egress: Egress) -> Network {
        Network {
            cfg: NetworkConfig {
                subnet: subnet.parse().unwrap(),
                egress,
                tag: "abc123".into(),
            },
            alloc: Mutex::new(Alloc::default()),
            grants: Mutex::new(Grants::default()),
            nft: tokio::sync::Mutex::new(()),
        }
    }

    #[test]
    fn subnets_must_be_private_aligned_and_sized() {
        assert!("10.201.0.0/16".parse::<Subnet>().is_ok());
        for bad in [
            "10.201.0.0",
            "8.8.0.0/16",
            "10.201.0.1/16",
            "10.0.0.0/4",
            "10.0.0.0/30",
            "x/16",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn addresses_are_pairs_handed_out_round_robin() {
        let n = net("10.9.0.0/28", Egress::Public);
        // /28: 8 pairs, pair 0 reserved for the service address.
        let all: Vec<Ipv4Addr> = (0..7).map(|_| n.allocate().unwrap()).collect();
        assert_eq!(all[0], Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(all[6], Ipv4Addr::new(10, 9, 0, 15));
        assert!(matches!(n.allocate(), Err(NetworkError::Exhausted(_))));
        assert_eq!(n.service_ip(), Ipv4Addr::new(10, 9, 0, 1));
        assert!(!all.contains(&n.service_ip()));
        // A freed address comes back only once the cursor went round.
        n.release(all[1]);
        n.release(all[4]);
        assert_eq!(n.allocate().unwrap(), all[1]);
        assert_eq!(n.allocate().unwrap(), all[4]);
        let m = n.machine_net(all[0]);
        assert_eq!(m.gateway, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(m.host_iface, "hg0a090003");
        assert!(m.host_iface.len() <= 15);
    }

    #[test]
    fn allocation_skips_what_exists() {
        let n = net("10.9.0.0/28", Egress::Public);
        n.alloc.lock().unwrap().taken.insert(1);
        n.alloc.lock().unwrap().cursor = 1;
        assert_eq!(n.allocate().unwrap(), Ipv4Addr::new(10, 9, 0, 5));
        assert_eq!(
            n.cfg.subnet.pair_of(Ipv4Addr::new(10, 9, 0, 5)),
            Some(2),
            "machine side of pair 2"
        );
        assert_eq!(n.cfg.subnet.pair_of(Ipv4Addr::new(10, 9, 0, 4)), None);
        assert_eq!(n.cfg.subnet.pair_of(Ipv4Addr::new(10, 9, 0, 1)), None);
        assert_eq!(n.cfg.subnet.pair_of(Ipv4Addr::new(10, 9, 1, 5)), None);
    }

    #[test]
    fn the_ruleset_denies_by_default() {
        let rules = net("10.9.0.0/16", Egress::Public).ruleset();
        assert!(rules.starts_with("table inet hangar_abc123 {"));
        // Input from machines: replies and granted resources only.
        let input = rules.split("chain input").nth(1).unwrap();
        let input = &input[..input.find('}').unwrap()];
        let lines: Vec<&str> = input
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            &lines[2..],
            [
                "ip saddr 10.9.0.0/16 ct state established,related accept",
                "ip saddr 10.9.0.0/16 ct status dnat accept",
                "ip saddr 10.9.0.0/16 drop",
                "iifname \"hg*\" meta nfproto ipv6 drop",
            ]
        );
        let forward = rules.split("chain forward").nth(1).unwrap();
        // Nothing but replies enters a machine: no machine reaches another.
        let enter = forward.find("ip daddr 10.9.0.0/16 drop").unwrap();
        assert!(
            forward
                .find("ip daddr 10.9.0.0/16 ct state established,related accept")
                .unwrap()
                < enter
        );
        assert!(forward.contains("ip saddr 10.9.0.0/16 ip daddr 169.254.0.0/16 drop"));
        assert!(forward.contains("10.0.0.0/8") && forward.contains("192.168.0.0/16"));
        assert!(rules.contains(
            "ip saddr 10.9.0.0/16 ip daddr 10.9.0.1 ip saddr . tcp dport @granted dnat ip to tcp dport map @endpoints"
        ));
        let closed = net("10.9.0.0/16", Egress::None).ruleset();
        assert!(closed.contains("    ip saddr 10.9.0.0/16 drop\n  }\n}"));
    }

    #[test]
    fn urls_get_the_service_address() {
        let to: SocketAddr = "10.9.0.1:5432".parse().unwrap();
        assert_eq!(
            replace_authority("postgres://u:p%40ss@127.0.0.1:5432/db?sslmode=disable", to),
            "postgres://u:p%40ss@10.9.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            replace_authority("nats://localhost:4222", to),
            "nats://10.9.0.1:5432"
        );
        assert_eq!(
            url_host_port("redis://u:p@db.internal:6380/", 6379),
            Some(("db.internal".into(), 6380))
        );
        assert_eq!(
            url_host_port("nats://127.0.0.1", 4222),
            Some(("127.0.0.1".into(), 4222))
        );
        assert_eq!(
            url_host_port("http://[::1]:7070", 80),
            Some(("::1".into(), 7070))
        );
        assert_eq!(url_host_port("not a url", 1), None);
    }

    #[test]
    fn endpoints_resolve_to_ipv4() {
        assert_eq!(
            resolve("127.0.0.1", 5432).unwrap(),
            "127.0.0.1:5432".parse().unwrap()
        );
        assert_eq!(
            resolve("::1", 7070).unwrap(),
            "127.0.0.1:7070".parse().unwrap()
        );
        assert!(resolve("2001:db8::1", 1).is_err());
        let used: HashSet<u16> = [5432].into();
        assert_eq!(free_service_port(5432, &used), 20000);
        assert_eq!(free_service_port(6379, &used), 6379);
    }
}
