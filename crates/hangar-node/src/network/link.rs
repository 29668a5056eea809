//! Wiring a started container's network namespace to the host.
//!
//! runc makes a machine's user and network namespaces itself (the network
//! namespace is owned by the machine's user namespace, as the kernel wants
//! for mounting sysfs inside and for `runc exec`). Between `runc create`
//! and `runc start`, [`attach`] gives it its link: a veth pair whose host
//! end carries the machine's gateway address and whose other end, moved
//! into the namespace as `eth0`, carries the machine's address and default
//! route. When the container is deleted the kernel removes the namespace,
//! and the veth pair with it: a stopped machine holds no namespace, link
//! or mount, only its address, its firewall grants and its rows.
//!
//! All of it is rtnetlink requests (the `rtnetlink` crate), sent from a
//! thread of its own that joins the namespace with `setns(2)` for the
//! inside half, as `ip netns exec` does: well under a millisecond, where
//! the same with `ip` and `nsenter` processes costs about ten.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{MachineNet, NetworkError};

/// The name of a machine's end of its link.
const INSIDE: &str = "eth0";

/// Gives the network namespace of process `pid` (a created, not yet
/// started container) the machine's link, addresses and route; replaces a
/// host end of the same name that a crash or a slow namespace teardown
/// left.
pub async fn attach(net: &MachineNet, pid: u32) -> Result<(), NetworkError> {
    let net = net.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: `setns` changes the calling thread's namespace
    // for good, so never a runtime worker's.
    std::thread::Builder::new()
        .name("hangar-netns".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|source| NetworkError::Io {
                    what: "starting a netlink runtime".into(),
                    source,
                })
                .and_then(|rt| rt.block_on(wire(&net, pid)));
            let _ = tx.send(result);
        })
        .map_err(|source| NetworkError::Io {
            what: "starting a netlink thread".into(),
            source,
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(NetworkError::Command {
            command: "netlink".into(),
            stderr: "the netlink thread ended without an answer".into(),
        })
    })
}

/// Removes the host end of a machine's link, if one is left (best effort).
pub async fn detach(host_iface: &str) {
    if !Path::new("/sys/class/net").join(host_iface).exists() {
        return;
    }
    if let Ok(h) = connect() {
        let _ = delete_named(&h, host_iface).await;
    }
}

async fn wire(net: &MachineNet, pid: u32) -> Result<(), NetworkError> {
    let step = |what: &'static str| move |e: rtnetlink::Error| failed(what, e);
    // The host's half, from the host's namespace.
    let host = connect()?;
    delete_named(&host, &net.host_iface).await?;
    let peer = LinkUnspec::new_with_name(INSIDE).setns_by_pid(pid).build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(net.host_iface.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link()
        .add(veth)
        .execute()
        .await
        .map_err(step("adding the veth pair"))?;
    let conf = Path::new("/proc/sys/net");
    let iface = &net.host_iface;
    // Connections DNATed to a resource on the host's loopback.
    super::write_sysctl(
        &conf.join("ipv4/conf").join(iface).join("route_localnet"),
        "1",
    )?;
    super::write_sysctl(
        &conf.join("ipv6/conf").join(iface).join("disable_ipv6"),
        "1",
    )?;
    // Strict reverse-path filtering: a packet from this link must come from
    // the machine's own address.
    super::write_sysctl(&conf.join("ipv4/conf").join(iface).join("rp_filter"), "1")?;
    let index = index_of(&host, iface).await?;
    host.address()
        .add(index, IpAddr::V4(net.gateway), 31)
        .execute()
        .await
        .map_err(step("adding the gateway address"))?;
    host.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(step("bringing the host's end up"))?;

    // The machine's half, from inside its namespace.
    let ns_path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&ns_path).map_err(|source| NetworkError::Io {
        what: format!("opening {ns_path}"),
        source,
    })?;
    // SAFETY: setns on this thread only, with a valid, open namespace fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetworkError::Io {
            what: format!("joining {ns_path}"),
            source: std::io::Error::last_os_error(),
        });
    }
    let inside = connect()?;
    inside
        .link()
        .set(LinkUnspec::new_with_name("lo").up().build())
        .execute()
        .await
        .map_err(step("bringing lo up"))?;
    let eth0 = index_of(&inside, INSIDE).await?;
    inside
        .address()
        .add(eth0, IpAddr::V4(net.address), 31)
        .execute()
        .await
        .map_err(step("adding the machine's address"))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(step("bringing eth0 up"))?;
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(net.gateway)
                .output_interface(eth0)
                .build(),
        )
        .execute()
        .await
        .map_err(step("adding the default route"))?;
    Ok(())
}

/// A netlink connection in the calling thread's network namespace, driven
/// on the current runtime.
fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetworkError::Io {
        what: "opening a netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetworkError> {
    match find(h, name).await? {
        Some(i) => Ok(i),
        None => Err(NetworkError::Command {
            command: format!("netlink: finding {name}"),
            stderr: "no such link".into(),
        }),
    }
}

async fn find(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // No such device: the kernel answers with an error, not an empty
        // dump.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(failed("looking up a link", e)),
    }
}

async fn delete_named(h: &Handle, name: &str) -> Result<(), NetworkError> {
    if let Some(index) = find(h, name).await? {
        h.link()
            .del(index)
            .execute()
            .await
            .map_err(|e| failed("removing a leftover link", e))?;
    }
    Ok(())
}

fn failed(what: &str, e: rtnetlink::Error) -> NetworkError {
    NetworkError::Command {
        command: format!("netlink: {what}"),
        stderr: e.to_string(),
    }
}
