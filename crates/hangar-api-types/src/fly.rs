//! The Fly-compatible Machines API, under `/v1`: the field names and
//! shapes Fly's clients (fly-go, flyctl) send and decode.

use std::collections::BTreeMap;

use hangar_core::machine::MachineConfig;
use hangar_core::status::MachineState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/apps`: Fly's current spec sends `name`, older clients
/// `app_name`; other fields (`network`, `app_role_id`) are accepted and
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateApp {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub org_slug: Option<String>,
}

/// A created app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppCreated {
    pub id: String,
    pub name: String,
}

/// `GET /v1/apps?org_slug=`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct ListAppsQuery {
    #[serde(default)]
    pub org_slug: Option<String>,
}

/// An app in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub machine_count: u64,
    pub network: String,
}

/// `GET /v1/apps`: one page holds them all (`next_cursor` is null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppsPage {
    pub total_apps: u64,
    pub apps: Vec<AppSummary>,
    pub next_cursor: Option<String>,
}

/// An app's organisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub name: String,
    pub slug: String,
}

/// `GET /v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub organization: Organization,
    /// `pending` (no machine yet) or `deployed`.
    pub status: String,
}

/// Where a machine's image came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub labels: BTreeMap<String, String>,
}

/// How a machine's process exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExitEvent {
    /// -1 when a signal ended it.
    pub exit_code: i64,
    pub oom_killed: bool,
    pub requested_stop: bool,
    pub restarting: bool,
    /// RFC 3339.
    pub exited_at: String,
}

/// What an event carries (an exit's details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventRequest {
    pub exit_event: ExitEvent,
}

/// One entry of a machine's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineEvent {
    /// Increasing; what `from_event_id` of a wait names.
    pub id: String,
    /// `launch`, `start`, `stop`, `exit`, `suspend`, `update`, `destroy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The state it led to.
    pub status: String,
    /// `user` or `hangar`.
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<EventRequest>,
}

/// A check's latest result, as Fly shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineCheck {
    pub name: String,
    /// `passing`, `warning` (not checked yet) or `critical`.
    pub status: String,
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub state: MachineState,
    /// The region it was asked for (it runs on this node).
    pub region: String,
    pub instance_id: String,
    /// The same as `instance_id`: Fly's newer name.
    pub version: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Newest first.
    pub events: Vec<MachineEvent>,
    pub checks: Vec<MachineCheck>,
    pub cordoned: bool,
    pub host_status: String,
    /// Always null here: the config is never incomplete.
    pub incomplete_config: Option<MachineConfig>,
    /// The nonce of the lease a create with `lease_ttl` took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `POST /v1/apps/{app}/machines` and `POST …/machines/{id}` (update).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateMachine {
    #[serde(default)]
    pub name: Option<String>,
    /// Any region name (`iad`, `lhr`…): recorded and echoed.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub skip_launch: bool,
    /// Seconds of a lease the creator takes at once.
    #[serde(default)]
    pub lease_ttl: Option<u64>,
    pub config: MachineConfig,
}

/// `GET /v1/apps/{app}/machines` filters (`metadata.KEY=VALUE` too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct ListMachinesQuery {
    #[serde(default)]
    pub include_deleted: bool,
    #[serde(default)]
    pub region: Option<String>,
}

/// `POST …/lease` body (fly-go sends `?ttl=` and no body instead).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// Seconds (1 to 3600, default 30).
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `?ttl=` of a lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct LeaseQuery {
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseData {
    /// What the holder sends as `fly-machine-lease-nonce`.
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    pub version: String,
}

/// A lease, in the envelope Fly's clients read (`data.nonce`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// `success`.
    pub status: String,
    pub data: LeaseData,
}

/// `POST …/metadata/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetadataValue {
    pub value: String,
}

/// `PUT` (replace) or `PATCH` (merge) `…/metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetadataUpdate {
    /// A null or empty value removes the key.
    pub metadata: BTreeMap<String, Option<String>>,
    /// Applies only to this version of the machine (412 otherwise).
    #[serde(default)]
    pub machine_version: Option<String>,
}

/// `POST …/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    /// The command as argv (preferred).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The command as one string, split on whitespace (Fly's older field).
    #[serde(default)]
    pub cmd: Option<String>,
    /// Seconds before it is killed (1 to 600, default 30).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// What an exec printed (each stream capped) and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub exit_code: i64,
    pub exit_signal: i64,
    pub stdout: String,
    pub stderr: String,
    /// A stream was longer than its cap.
    pub truncated: bool,
}

/// `POST …/start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub previous_state: MachineState,
    pub migrated: bool,
    pub new_host: String,
}

/// `POST …/stop` body; fly-go sends `{"id", "timeout": "0s"}` by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    /// `SIGTERM` (default), `SIGINT`, `SIGQUIT`, `SIGHUP`, `SIGUSR1`,
    /// `SIGUSR2`, `SIGKILL`.
    #[serde(default)]
    pub signal: Option<String>,
    /// A Go duration (`"10s"`) or nanoseconds; `"0s"`: the machine's own.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub timeout: Option<Value>,
}

/// `POST …/restart?signal=&timeout=&force_stop=`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct RestartQuery {
    #[serde(default)]
    pub signal: Option<String>,
    /// A Go duration (`"10s"`) or integer nanoseconds.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub force_stop: Option<bool>,
}

/// `DELETE …/machines/{id}?force=|kill=`: either destroys a running one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct DestroyQuery {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub kill: bool,
}

/// `POST …/signal`: a name (`"SIGUSR1"`) or a number (`9`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalRequest {
    #[schema(value_type = Object)]
    pub signal: Value,
}

/// `GET …/wait?state=&timeout=&version=&from_event_id=`: `state` may be
/// repeated or comma-separated (`started`, `stopped`, `suspended`,
/// `destroyed`, `failed`, `settled`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct WaitQuery {
    #[serde(default)]
    pub state: Option<String>,
    /// Seconds (1 to 60, default 60).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// The machine version to wait on (`instance_id` is the older name).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Only a state reached after this event counts.
    #[serde(default)]
    pub from_event_id: Option<String>,
}

/// A wait that ended in a wanted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitResult {
    pub ok: bool,
    pub state: MachineState,
    pub version: String,
    pub event_id: Option<String>,
}

/// One process of a machine (`GET …/ps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessStat {
    pub pid: u32,
    pub command: String,
    pub directory: String,
    /// CPU time used, in milliseconds.
    pub cpu: u64,
    /// Resident memory, in bytes.
    pub rss: u64,
    /// Start time, Unix milliseconds.
    pub stime: i64,
    /// How long it has run, in milliseconds.
    pub rtime: i64,
    /// Not reported yet: always empty.
    #[schema(value_type = Vec<Object>)]
    pub listen_sockets: Vec<Value>,
}

/// One version of a machine's config (`GET …/versions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineVersion {
    pub version: String,
    pub user_config: MachineConfig,
}
