//! The node agent: runs machines, watches them, and publishes where each app
//! can be reached.
//!
//! Layout:
//! - [`driver`]: how a machine's process is started and stopped: `runc` (an
//!   OCI container with its own root filesystem, pid/mount/ipc/uts
//!   namespaces and cgroup limits) or `process` (a plain child process, the
//!   loud fallback where runc or root is missing).
//! - [`network`]: each runc machine's own network namespace and address,
//!   and the node's default-deny nftables table (machines reach only
//!   their app's declared resources, at one service address).
//! - [`seccomp`]: the default seccomp policy of runc machines (Docker's
//!   default for a container without capabilities), kept as data.
//! - [`agent`]: machine lifecycle, rollouts of releases, crash recovery
//!   (re-adopting machines that survived a restart of hangar), logs.
//!
//! Architecture Invariant: the agent learns nothing from the proxy and tells
//! it only complete upstream sets through `hangar_core::route::RouteSink`.

pub mod agent;
pub mod driver;
pub mod network;
pub mod seccomp;

pub use agent::{Agent, LogLimits, Naming, NodeConfig, NodeError};
pub use driver::{Driver, DriverChoice, Limits};
pub use network::{Egress, Network, NetworkConfig, Subnet};
