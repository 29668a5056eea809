//! The agent's side of machine networking: giving machines their address
//! and namespace, and pointing their resources at the service address
//! (see [`crate::network`] for the mechanism).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hangar_core::machine::MachineConfig;
use hangar_resources::MachineResources;
use hangar_resources::gate::{self, Directory, Grant, Kind, NatsGrant, PostgresGrant, RedisGrant};
use hangar_store::Machine;
use tracing::info;

use super::{Agent, NodeError};
use crate::driver::DriverError;
use crate::network::{Endpoint, MachineNet, replace_authority, resolve, url_host_port};

/// The port a machine in its own namespace listens on: its first
/// service's `internal_port`, else 8080 (Fly's default).
pub(super) fn service_port(config: &MachineConfig) -> u16 {
    config
        .services
        .first()
        .map(|s| s.internal_port)
        .filter(|p| *p != 0)
        .unwrap_or(8080)
}

impl Agent {
    /// The address and port of a new machine: its own address with the
    /// runc driver, else a free port on the host's loopback.
    pub(super) fn new_address(&self, config: &MachineConfig) -> Result<(IpAddr, u16), NodeError> {
        match &self.inner.network {
            Some(net) => Ok((IpAddr::V4(net.allocate()?), service_port(config))),
            None => {
                let port = free_port().map_err(|source| DriverError::Io {
                    what: "finding a free port".into(),
                    source,
                })?;
                Ok((IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            }
        }
    }

    /// The machine's address, when it has one of its own on this node.
    fn own_address(&self, m: &Machine) -> Option<Ipv4Addr> {
        let net = self.inner.network.as_ref()?;
        match m.address {
            IpAddr::V4(a) if !a.is_loopback() && net.subnet_contains(a) => Some(a),
            _ => None,
        }
    }

    /// Gives back an address handed out for a machine never stored.
    pub(super) fn forget_address(&self, address: IpAddr) {
        if let (Some(net), IpAddr::V4(a)) = (&self.inner.network, address) {
            net.release(a);
        }
    }

    /// Removes a destroyed machine's grants, leftover link and address.
    pub(super) async fn remove_network(&self, m: &Machine) {
        if let (Some(net), Some(addr)) = (&self.inner.network, self.own_address(m)) {
            self.inner.resource_gates.forget(IpAddr::V4(addr));
            net.remove(addr).await;
        }
    }

    /// The link a runc machine's new network namespace gets at start.
    pub(super) fn link_of(&self, m: &Machine) -> Option<MachineNet> {
        let net = self.inner.network.as_ref()?;
        Some(net.machine_net(self.own_address(m)?))
    }

    /// A machine made before machines had addresses of their own (it
    /// listened on the host's loopback) gets one at its next launch.
    pub(super) async fn with_own_network(&self, m: &Machine) -> Result<Machine, NodeError> {
        if self.inner.network.is_none() || self.own_address(m).is_some() {
            return Ok(m.clone());
        }
        let (address, port) = self.new_address(&m.config)?;
        if let Err(e) = self
            .inner
            .store
            .set_machine_network(&m.id, address, port)
            .await
        {
            self.forget_address(address);
            return Err(e.into());
        }
        let moved = Machine {
            address,
            port: i64::from(port),
            ..m.clone()
        };
        info!(machine = %m.id, %address, "machine moved into a network namespace of its own");
        Ok(moved)
    }

    /// At start: removes what an earlier layout kept for machines of this
    /// node (namespaces as bind mounts, made ahead of each start).
    pub(super) async fn reconcile_networks(&self) -> Result<(), NodeError> {
        if let Some(net) = &self.inner.network {
            net.remove_old_namespaces().await;
        }
        Ok(())
    }

    /// A machine re-adopted after a restart of hangar gets its resource
    /// grants again (the firewall table is rebuilt at start).
    pub(super) async fn regrant(&self, m: &Machine) -> Result<(), NodeError> {
        let Some(resources) = self.inner.resources.get() else {
            return Ok(());
        };
        if self.own_address(m).is_none() {
            return Ok(());
        }
        let mut content = resources
            .for_machine(&m.app_id)
            .await
            .map_err(|e| NodeError::Resources(e.to_string()))?;
        let app = self
            .inner
            .store
            .app(&m.app_id)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("app of machine {}", m.id)))?;
        self.expose_resources(m, &app.name, &mut content).await?;
        let (_, _, env) = self.image_of(m).await?;
        if hangar_resources::shuttle::is_shuttle_image(&env) {
            let mut shuttle = resources
                .shuttle_env(&m.app_id, m.port)
                .await
                .map_err(|e| NodeError::Resources(e.to_string()))?;
            self.expose_platform_api(m, &mut shuttle).await?;
        }
        Ok(())
    }

    /// Points a machine's resources (Postgres, Redis, NATS) at the service
    /// address, through the node's gate for each server, and tells the
    /// gates what this machine may do there: connect as its app's own
    /// role, user and subjects only. Machines on the host's network keep
    /// the endpoints as configured.
    pub(super) async fn expose_resources(
        &self,
        m: &Machine,
        app_name: &str,
        content: &mut MachineResources,
    ) -> Result<(), NodeError> {
        let (Some(net), Some(addr)) = (&self.inner.network, self.own_address(m)) else {
            return Ok(());
        };
        self.inner.resource_gates.directory.set(
            IpAddr::V4(addr),
            Grant {
                app: app_name.to_owned(),
                postgres: content.postgres.as_ref().map(|pg| PostgresGrant {
                    user: pg.user.clone(),
                    database: pg.database.clone(),
                }),
                redis: content.redis.as_ref().map(|r| RedisGrant {
                    user: r.user.clone(),
                    password: r.password.clone(),
                    prefix: r.prefix.clone(),
                }),
                nats: content.pubsub.as_ref().map(|p| NatsGrant {
                    prefix: p.prefix.clone(),
                }),
            },
        );
        let mut endpoints: Vec<Endpoint<'_>> = Vec::new();
        if let Some(pg) = &mut content.postgres {
            let target = self
                .resource_gate(Kind::Postgres, &pg.host, pg.port)
                .await?;
            endpoints.push(Endpoint {
                target,
                rewrite: Box::new(move |to: SocketAddr| {
                    pg.url = replace_authority(&pg.url, to);
                    pg.host = to.ip().to_string();
                    pg.port = to.port();
                }),
            });
        }
        if let Some(redis) = &mut content.redis
            && let Some((host, port)) = url_host_port(&redis.url, 6379)
        {
            let target = self.resource_gate(Kind::Redis, &host, port).await?;
            endpoints.push(Endpoint {
                target,
                rewrite: Box::new(move |to| redis.url = replace_authority(&redis.url, to)),
            });
        }
        if let Some(pubsub) = &mut content.pubsub
            && let Some((host, port)) = url_host_port(&pubsub.url, 4222)
        {
            let target = self.resource_gate(Kind::Nats, &host, port).await?;
            endpoints.push(Endpoint {
                target,
                rewrite: Box::new(move |to| pubsub.url = replace_authority(&pubsub.url, to)),
            });
        }
        if endpoints.is_empty() {
            return Ok(());
        }
        net.expose(addr, &mut endpoints).await?;
        Ok(())
    }

    /// The gate in front of the server at `host:port` (made on first need:
    /// a listener on the host's loopback, reached only through DNAT).
    async fn resource_gate(
        &self,
        kind: Kind,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, NodeError> {
        let server = resolve(host, port)?;
        let mut fronts = self.inner.resource_gates.fronts.lock().await;
        if let Some(front) = fronts.get(&(kind_tag(kind), server)) {
            return Ok(*front);
        }
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| DriverError::Io {
                what: format!("binding the {kind:?} gate"),
                source,
            })?;
        let front = listener.local_addr().map_err(|source| DriverError::Io {
            what: format!("binding the {kind:?} gate"),
            source,
        })?;
        let directory: Arc<dyn Directory> = self.inner.resource_gates.directory.clone();
        let serve = gate::serve(
            kind,
            listener,
            server,
            directory,
            gate::Limits::default(),
            std::future::pending(),
        );
        match &self.inner.runtime {
            Some(rt) => drop(rt.spawn(serve)),
            None => drop(tokio::spawn(serve)),
        }
        info!(?kind, %server, %front, "gate for machines started");
        fronts.insert((kind_tag(kind), server), front);
        Ok(front)
    }

    /// How a machine in its own namespace reaches the Postgres server
    /// named in `url` (the Shuttle API hands such a URL to the app): the
    /// service address and port of its gate, when one exists; the URL as
    /// it is otherwise.
    pub async fn postgres_url_for_machines(&self, url: &str) -> String {
        let Some(net) = &self.inner.network else {
            return url.to_owned();
        };
        let Some((host, port)) = url_host_port(url, 5432) else {
            return url.to_owned();
        };
        let Ok(server) = resolve(&host, port) else {
            return url.to_owned();
        };
        let front = self
            .inner
            .resource_gates
            .fronts
            .lock()
            .await
            .get(&(kind_tag(Kind::Postgres), server))
            .copied();
        match front.and_then(|f| net.seen_as(f)) {
            Some(seen) => replace_authority(url, seen),
            None => url.to_owned(),
        }
    }

    /// A Shuttle app's runtime calls Hangar's API (`SHUTTLE_API`) at
    /// start: it reaches it at the service address too, granted to that
    /// app's machines only (the API authenticates it by its app's token).
    pub(super) async fn expose_platform_api(
        &self,
        m: &Machine,
        env: &mut [String],
    ) -> Result<(), NodeError> {
        let (Some(net), Some(addr)) = (&self.inner.network, self.own_address(m)) else {
            return Ok(());
        };
        for kv in env.iter_mut() {
            let Some(url) = kv.strip_prefix("SHUTTLE_API=").map(str::to_owned) else {
                continue;
            };
            let Some((host, port)) = url_host_port(&url, 80) else {
                continue;
            };
            let mut endpoints = [Endpoint {
                target: resolve(&host, port)?,
                rewrite: Box::new(|to| {
                    *kv = format!("SHUTTLE_API={}", replace_authority(&url, to))
                }),
            }];
            net.expose(addr, &mut endpoints).await?;
        }
        Ok(())
    }
}

/// The gates of a node and what they let each machine do.
#[derive(Default)]
pub(super) struct Gates {
    /// Machine address → its app's grant; read by every gate.
    directory: Arc<GrantTable>,
    /// (protocol, server) → the gate's listening address.
    fronts: tokio::sync::Mutex<HashMap<(u8, SocketAddr), SocketAddr>>,
}

impl Gates {
    /// Forgets a destroyed machine's grant (before its address is reused).
    pub(super) fn forget(&self, address: IpAddr) {
        self.directory.remove(address);
    }
}

fn kind_tag(kind: Kind) -> u8 {
    match kind {
        Kind::Postgres => 0,
        Kind::Redis => 1,
        Kind::Nats => 2,
    }
}

/// Grants by machine address.
#[derive(Default)]
struct GrantTable(std::sync::Mutex<HashMap<IpAddr, Grant>>);

impl GrantTable {
    fn set(&self, address: IpAddr, grant: Grant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, grant);
    }

    fn remove(&self, address: IpAddr) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&address);
    }
}

impl Directory for GrantTable {
    fn lookup(&self, peer: IpAddr) -> Option<Grant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned()
    }
}

/// A TCP port nothing listens on right now (process driver).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
