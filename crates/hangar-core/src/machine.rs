//! A machine's configuration, in the shape and with the field names of Fly's
//! Machines API (`config` of a machine), so tools written for Fly work
//! against Hangar unchanged. Unknown fields are ignored, as Fly does.
//!
//! This is the runtime contract between the API (which parses and
//! validates it) and the node agent (which runs it).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{self, Bounds};

/// A machine's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct MachineConfig {
    /// Image reference in Hangar's image store: `name:tag`, `name` or a
    /// manifest digest `sha256:…`.
    #[serde(default, deserialize_with = "null_default")]
    pub image: String,
    /// Environment variables, added to the image's.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// CPU, memory and GPU size; enforced with cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Network services (used by the proxy).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub services: Vec<Service>,
    /// Machine-level health checks (monitoring only).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub checks: BTreeMap<String, Check>,
    /// What happens when the main process exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Destroy the machine once its process exits (and is not restarted).
    #[serde(default, deserialize_with = "null_default")]
    pub auto_destroy: bool,
    /// Free-form key/value pairs, filterable in list calls.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: BTreeMap<String, String>,
    /// Overrides of the image's entrypoint and command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// Processes; the first one's command is the machine's main process.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub processes: Vec<Process>,
    /// How the machine is asked to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
}

/// CPU, memory and GPU size of a machine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Guest {
    /// `shared` or `performance` (both are a CPU quota here).
    #[serde(
        default = "default_cpu_kind",
        deserialize_with = "null_default_cpu_kind"
    )]
    pub cpu_kind: String,
    /// Whole CPUs of quota.
    #[serde(default = "one", deserialize_with = "null_one")]
    pub cpus: u32,
    /// Memory limit in MiB.
    #[serde(default = "default_memory", deserialize_with = "null_default_memory")]
    pub memory_mb: u64,
    /// Number of GPUs passed in.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero"
    )]
    pub gpus: u32,
    /// GPU model wanted (e.g. `a100-pcie-40gb`); informational here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            cpu_kind: default_cpu_kind(),
            cpus: 1,
            memory_mb: default_memory(),
            gpus: 0,
            gpu_kind: None,
        }
    }
}

fn default_cpu_kind() -> String {
    "shared".into()
}
fn one() -> u32 {
    1
}
fn default_memory() -> u64 {
    256
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

// ---- JSON null is "not given" ----
//
// Fly's own answers (and clients that copy them) send `"env": null`,
// `"services": null`, `"guest": {"cpus": null}`: each means the default.

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn null_or<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    default: fn() -> T,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_else(default))
}

fn null_default_cpu_kind<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    null_or(d, default_cpu_kind)
}
fn null_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    null_or(d, one)
}
fn null_default_memory<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    null_or(d, default_memory)
}
fn null_tcp<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    null_or(d, tcp)
}
fn null_requests<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    null_or(d, requests)
}

/// A check's duration as given: a string is kept as written (validated
/// later, naming the field); a number is nanoseconds, as Fly's clients
/// send `time.Duration`, kept as its Go string.
fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(v @ serde_json::Value::Number(_)) => fly_duration(&v)
            .map(|d| Some(duration::format(d)))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{v} is not a duration in nanoseconds"))
            }),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a duration such as \"10s\", not {other}"
        ))),
    }
}

/// A network service of a machine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Service {
    /// `tcp` (HTTP is a handler on a tcp service, as in Fly).
    #[serde(default = "tcp", deserialize_with = "null_tcp")]
    pub protocol: String,
    /// The port the app listens on inside the machine.
    pub internal_port: u16,
    /// Public ports and their handlers.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<Port>,
    /// Start the machine when a request arrives and none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Stop or suspend the machine when idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    /// Machines autostop leaves running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// Concurrency limits for load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Hangar's extension: how long without requests before autostop acts
    /// (e.g. `"5m"`, down to `"1s"`; default 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Checks that gate routing: a machine gets the service's traffic only
    /// while they pass (a new deploy machine, only once they have passed).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub checks: Vec<Check>,
}

/// Idle time before autostop acts when a service names none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The range of a service's idle timeout.
pub const IDLE_TIMEOUT: Bounds = Bounds::at_least(Duration::from_secs(1));

impl Service {
    /// The service's idle timeout (validated by [`MachineConfig::validate`]).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
            .as_deref()
            .and_then(parse_duration)
            .map(|d| IDLE_TIMEOUT.clamp(d))
            .unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }
}

fn tcp() -> String {
    "tcp".into()
}

/// A public port of a service.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub handlers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
}

/// Concurrency limits of a service.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(
        rename = "type",
        default = "requests",
        deserialize_with = "null_requests"
    )]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

fn requests() -> String {
    "requests".into()
}

/// What to do with an idle machine. Fly accepts `true`/`false` or
/// `"off"`/`"stop"`/`"suspend"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

/// `true`/`false` or `"off"`/`"stop"`/`"suspend"`; answers use the strings.
impl utoipa::PartialSchema for Autostop {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["off", "stop", "suspend"])),
            )
            .into()
    }
}

impl utoipa::ToSchema for Autostop {}

impl Serialize for Autostop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Autostop::Off => "off",
            Autostop::Stop => "stop",
            Autostop::Suspend => "suspend",
        })
    }
}

impl<'de> Deserialize<'de> for Autostop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Autostop::Stop),
            Raw::Bool(false) => Ok(Autostop::Off),
            Raw::Str(s) => match s.as_str() {
                "off" => Ok(Autostop::Off),
                "stop" => Ok(Autostop::Stop),
                "suspend" => Ok(Autostop::Suspend),
                other => Err(serde::de::Error::custom(format!(
                    "autostop must be true, false, \"off\", \"stop\" or \"suspend\", not {other:?}"
                ))),
            },
        }
    }
}

/// A health check.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Check {
    /// `http` or `tcp`.
    #[serde(rename = "type", default = "tcp", deserialize_with = "null_tcp")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "duration_text"
    )]
    pub interval: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "duration_text"
    )]
    pub timeout: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "duration_text"
    )]
    pub grace_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl From<&crate::check::Check> for Check {
    /// The Machines API's shape of a check.
    fn from(c: &crate::check::Check) -> Check {
        use crate::check::CheckKind;
        let (kind, method, path) = match &c.kind {
            CheckKind::Tcp => ("tcp", None, None),
            CheckKind::Http { method, path } => ("http", Some(method.clone()), Some(path.clone())),
        };
        Check {
            kind: kind.into(),
            port: c.port,
            interval: Some(duration::format(c.interval)),
            timeout: Some(duration::format(c.timeout)),
            grace_period: Some(duration::format(c.grace_period)),
            method,
            path,
        }
    }
}

impl Check {
    /// What the check does and its timings, defaults filled in. Values
    /// [`MachineConfig::validate`] would refuse fall back to the defaults.
    pub fn spec(&self) -> crate::check::Check {
        use crate::check::{Check as Spec, CheckKind};
        let kind = if self.kind.eq_ignore_ascii_case("http") {
            CheckKind::Http {
                method: self.method.as_deref().unwrap_or("GET").to_ascii_uppercase(),
                path: self.path.clone().unwrap_or_else(|| "/".into()),
            }
        } else {
            CheckKind::Tcp
        };
        let mut spec = Spec::new(kind);
        spec.port = self.port;
        // Clamped: rows stored before the bounds existed stay bounded.
        let time = |v: &Option<String>| {
            v.as_deref()
                .and_then(parse_duration)
                .map(|d| d.min(duration::MAX_TENANT_DURATION))
        };
        if let Some(d) = time(&self.interval) {
            spec.interval = d;
        }
        if let Some(d) = time(&self.timeout) {
            spec.timeout = d;
        }
        if let Some(d) = time(&self.grace_period) {
            spec.grace_period = d;
        }
        spec
    }

    /// Errs naming the field (under `at`) that is wrong.
    fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        if !matches!(self.kind.to_ascii_lowercase().as_str(), "tcp" | "http") {
            return Err(invalid(
                &format!("{at}.type"),
                format!("must be \"tcp\" or \"http\", not {:?}", self.kind),
            ));
        }
        for (name, value, min) in [
            ("interval", &self.interval, Duration::from_millis(100)),
            ("timeout", &self.timeout, Duration::from_millis(1)),
            ("grace_period", &self.grace_period, Duration::ZERO),
        ] {
            if let Some(v) = value {
                let d = parse_duration(v).ok_or_else(|| {
                    invalid(
                        &format!("{at}.{name}"),
                        format!("must be a duration such as \"10s\" or \"500ms\", not {v:?}"),
                    )
                })?;
                Bounds::at_least(min)
                    .check(d)
                    .map_err(|why| invalid(&format!("{at}.{name}"), why))?;
            }
        }
        if let Some(p) = &self.path
            && !p.starts_with('/')
        {
            return Err(invalid(
                &format!("{at}.path"),
                format!("must start with '/', not {p:?}"),
            ));
        }
        Ok(())
    }
}

/// Restart policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Restart {
    #[serde(default, deserialize_with = "null_default")]
    pub policy: RestartPolicy,
    /// Consecutive restarts tried before giving up (on-failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// When a machine whose process exited is started again.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never.
    #[serde(rename = "no")]
    No,
    /// When it exited with a non-zero status (or was killed), up to max_retries.
    #[default]
    #[serde(rename = "on-failure")]
    OnFailure,
    /// Whatever the exit status.
    #[serde(rename = "always")]
    Always,
}

/// Overrides of the image's entrypoint and command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Init {
    /// Replaces entrypoint and cmd entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_default")]
    pub tty: bool,
}

/// A process of the machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Process {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// How a machine is asked to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct StopConfig {
    /// Grace before SIGKILL, e.g. `"10s"` (a number is nanoseconds, as
    /// Fly's clients send Go's `time.Duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<serde_json::Value>,
    /// `SIGTERM` (default), `SIGINT`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2`, `SIGHUP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// A configuration value that is out of range; names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InvalidConfig {
    /// The JSON path of the field, e.g. `config.guest.cpus`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        field: format!("config.{field}"),
        message: message.into(),
    }
}

/// Signals a stop_config may name.
pub const STOP_SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", 15),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGHUP", 1),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGKILL", 9),
];

impl MachineConfig {
    /// Checks the ranges serde cannot express.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.image.trim().is_empty() {
            return Err(invalid(
                "image",
                "is required: name an image in Hangar's store (`hangar image import`, or an app's release image)",
            ));
        }
        if let Some(g) = &self.guest {
            if !(1..=64).contains(&g.cpus) {
                return Err(invalid(
                    "guest.cpus",
                    format!("must be 1 to 64, not {}", g.cpus),
                ));
            }
            if !(16..=1024 * 1024).contains(&g.memory_mb) {
                return Err(invalid(
                    "guest.memory_mb",
                    format!("must be 16 to 1048576 MiB, not {}", g.memory_mb),
                ));
            }
            if !matches!(g.cpu_kind.as_str(), "shared" | "performance") {
                return Err(invalid(
                    "guest.cpu_kind",
                    format!(
                        "must be \"shared\" or \"performance\", not {:?}",
                        g.cpu_kind
                    ),
                ));
            }
        }
        for key in self.env.keys() {
            if !crate::name::is_env_name(key) {
                return Err(invalid(
                    &format!("env.{key}"),
                    "environment variable names are letters, digits and '_', not starting with a digit",
                ));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.internal_port == 0 {
                return Err(invalid(
                    &format!("services[{i}].internal_port"),
                    "must be 1 to 65535",
                ));
            }
            if let Some(t) = &s.idle_timeout {
                let d = parse_duration(t).ok_or_else(|| {
                    invalid(
                        &format!("services[{i}].idle_timeout"),
                        "must be a duration of at least 1s, such as \"30s\" or \"5m\"",
                    )
                })?;
                IDLE_TIMEOUT
                    .check(d)
                    .map_err(|why| invalid(&format!("services[{i}].idle_timeout"), why))?;
            }
            if let Some(c) = &s.concurrency {
                if !matches!(c.kind.as_str(), "requests" | "connections") {
                    return Err(invalid(
                        &format!("services[{i}].concurrency.type"),
                        "must be \"requests\" or \"connections\"",
                    ));
                }
                if c.hard_limit == Some(0) {
                    return Err(invalid(
                        &format!("services[{i}].concurrency.hard_limit"),
                        "must be at least 1",
                    ));
                }
                if let (Some(soft), Some(hard)) = (c.soft_limit, c.hard_limit)
                    && soft > hard
                {
                    return Err(invalid(
                        &format!("services[{i}].concurrency.soft_limit"),
                        format!("{soft} is above hard_limit {hard}"),
                    ));
                }
            }
            for (j, check) in s.checks.iter().enumerate() {
                check.validate(&format!("services[{i}].checks[{j}]"))?;
            }
            if !matches!(s.protocol.as_str(), "tcp" | "udp") {
                return Err(invalid(
                    &format!("services[{i}].protocol"),
                    "must be \"tcp\" or \"udp\"",
                ));
            }
        }
        for (name, check) in &self.checks {
            check.validate(&format!("checks.{name}"))?;
        }
        if let Some(stop) = &self.stop_config {
            if let Some(sig) = &stop.signal
                && !STOP_SIGNALS.iter().any(|(n, _)| n == sig)
            {
                return Err(invalid(
                    "stop_config.signal",
                    format!(
                        "{sig:?} is not one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL"
                    ),
                ));
            }
            if let Some(t) = &stop.timeout {
                let d = fly_duration(t).ok_or_else(|| {
                    invalid(
                        "stop_config.timeout",
                        "must be a duration such as \"10s\" or a number of seconds",
                    )
                })?;
                Bounds::STOP_GRACE
                    .check(d)
                    .map_err(|why| invalid("stop_config.timeout", why))?;
            }
        }
        Ok(())
    }

    /// The guest, with defaults.
    pub fn guest(&self) -> Guest {
        self.guest.clone().unwrap_or_default()
    }

    /// The restart policy and max retries, with Fly's defaults.
    pub fn restart(&self) -> (RestartPolicy, u32) {
        let r = self.restart.clone().unwrap_or(Restart {
            policy: RestartPolicy::OnFailure,
            max_retries: None,
        });
        (r.policy, r.max_retries.unwrap_or(10))
    }

    /// The stop signal number and grace period.
    pub fn stop(&self) -> (i32, Duration) {
        let stop = self.stop_config.clone().unwrap_or_default();
        let sig = stop
            .signal
            .and_then(|s| STOP_SIGNALS.iter().find(|(n, _)| *n == s).map(|(_, v)| *v))
            .unwrap_or(15);
        let grace = stop
            .timeout
            .as_ref()
            .and_then(fly_duration)
            .map(|d| Bounds::STOP_GRACE.clamp(d))
            .unwrap_or(Duration::from_secs(10));
        (sig, grace)
    }

    /// argv for the machine: init.exec, else (init or first process)
    /// entrypoint/cmd over the image's.
    pub fn argv(&self, image_entrypoint: &[String], image_cmd: &[String]) -> Vec<String> {
        let init = self.init.clone().unwrap_or_default();
        let process = self.processes.first().cloned().unwrap_or_default();
        if let Some(exec) = init.exec.or(process.exec) {
            return exec;
        }
        let entrypoint = init
            .entrypoint
            .or(process.entrypoint)
            .unwrap_or_else(|| image_entrypoint.to_vec());
        let cmd = init
            .cmd
            .or(process.cmd)
            .unwrap_or_else(|| image_cmd.to_vec());
        entrypoint.into_iter().chain(cmd).collect()
    }
}

/// Parses Go-style durations as Fly uses them (see [`duration::parse`]).
pub fn parse_duration(s: &str) -> Option<Duration> {
    duration::parse(s)
}

/// A duration as the Machines API carries it: a Go duration string
/// (`"10s"`, `"1m0s"`), or a number of **nanoseconds** (Go's
/// `time.Duration`, as Fly's clients read and write bare numbers).
pub fn fly_duration(v: &serde_json::Value) -> Option<Duration> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_nanos)
            .or_else(|| n.as_f64().and_then(|f| duration::seconds(f / 1e9))),
        serde_json::Value::String(s) => duration::parse(s),
        // Fly also sends {"Duration": nanoseconds}.
        serde_json::Value::Object(o) => o
            .get("Duration")
            .and_then(|d| d.as_u64())
            .map(Duration::from_nanos),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_nanoseconds_as_in_go() {
        let c: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x",
            "stop_config": {"timeout": 5_000_000_000u64},
            "checks": {"c": {"type": "tcp", "port": 80, "interval": 15_000_000_000u64,
                             "timeout": "2s", "grace_period": null}},
        }))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.checks["c"].interval.as_deref(), Some("15s"));
        assert_eq!(c.checks["c"].spec().interval, Duration::from_secs(15));
        assert_eq!(
            fly_duration(&serde_json::json!(5_000_000_000u64)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            fly_duration(&serde_json::json!("1m0s")),
            Some(Duration::from_secs(60))
        );
        let bad: Result<MachineConfig, _> = serde_json::from_value(serde_json::json!({
            "image": "x", "checks": {"c": {"interval": -1}}
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn json_null_is_the_default_everywhere_fly_sends_it() {
        let c: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "app:v1", "env": null, "metadata": null, "services": null,
            "checks": null, "processes": null, "auto_destroy": null, "init": null,
            "guest": {"cpu_kind": null, "cpus": null, "memory_mb": null, "gpus": null},
            "restart": {"policy": null, "max_retries": null},
            "stop_config": null,
        }))
        .unwrap();
        assert!(c.env.is_empty() && c.metadata.is_empty() && c.services.is_empty());
        assert!(!c.auto_destroy);
        assert_eq!(c.guest(), Guest::default());
        let s: Service = serde_json::from_value(serde_json::json!({
            "protocol": null, "internal_port": 8080, "ports": null, "checks": null,
            "concurrency": {"type": null}
        }))
        .unwrap();
        assert_eq!(s.protocol, "tcp");
        assert!(s.ports.is_empty());
    }

    #[test]
    fn parses_fly_json_and_ignores_unknown_fields() {
        let json = r#"{
            "image": "hello:v1", "env": {"A": "1"}, "unknown_field": 7,
            "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
            "services": [{"protocol": "tcp", "internal_port": 8080, "autostop": "suspend",
                          "ports": [{"port": 80, "handlers": ["http"]}]}],
            "restart": {"policy": "on-failure", "max_retries": 3},
            "stop_config": {"timeout": "5s", "signal": "SIGINT"},
            "init": {"cmd": ["serve", "--fast"]}
        }"#;
        let c: MachineConfig = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.guest().cpus, 2);
        assert_eq!(c.services[0].autostop, Some(Autostop::Suspend));
        assert_eq!(c.restart(), (RestartPolicy::OnFailure, 3));
        assert_eq!(c.stop(), (2, Duration::from_secs(5)));
        let ep = vec!["/app/hello".to_string()];
        assert_eq!(c.argv(&ep, &[]), ["/app/hello", "serve", "--fast"]);
        let s: MachineConfig = serde_json::from_str(
            r#"{"image":"x","services":[{"internal_port":1,"autostop":true}]}"#,
        )
        .unwrap();
        assert_eq!(s.services[0].autostop, Some(Autostop::Stop));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let bad = |json: &str| {
            let c: MachineConfig = serde_json::from_str(json).unwrap();
            c.validate().unwrap_err().field
        };
        assert_eq!(bad(r#"{"image": ""}"#), "config.image");
        // Durations are finite and bounded: stop grace at most 5 minutes
        // (as Fly), everything else at most 24 hours.
        for (json, field) in [
            (
                r#"{"image": "x", "stop_config": {"timeout": "87600h"}}"#,
                "config.stop_config.timeout",
            ),
            (
                r#"{"image": "x", "stop_config": {"timeout": 1e20}}"#,
                "config.stop_config.timeout",
            ),
            (
                r#"{"image": "x", "stop_config": {"timeout": "inf"}}"#,
                "config.stop_config.timeout",
            ),
            (
                r#"{"image": "x", "services": [{"internal_port": 80, "idle_timeout": "1e20"}]}"#,
                "config.services[0].idle_timeout",
            ),
            (
                r#"{"image": "x", "services": [{"internal_port": 80, "idle_timeout": "25h"}]}"#,
                "config.services[0].idle_timeout",
            ),
            (
                r#"{"image": "x", "checks": {"c": {"type": "tcp", "port": 80, "interval": "48h"}}}"#,
                "config.checks.c.interval",
            ),
        ] {
            assert_eq!(bad(json), field, "{json}");
        }
        let ok: MachineConfig =
            serde_json::from_str(r#"{"image": "x", "stop_config": {"timeout": "5m"}}"#).unwrap();
        assert!(ok.validate().is_ok());
        // A row stored before the bounds: its grace is clamped, never 10 years.
        let old: MachineConfig =
            serde_json::from_str(r#"{"image": "x", "stop_config": {"timeout": "87600h"}}"#)
                .unwrap();
        assert_eq!(old.stop().1, duration::MAX_STOP_GRACE);
        assert_eq!(
            bad(r#"{"image": "x", "guest": {"cpus": 0}}"#),
            "config.guest.cpus"
        );
        assert_eq!(
            bad(r#"{"image": "x", "guest": {"memory_mb": 1}}"#),
            "config.guest.memory_mb"
        );
        assert_eq!(
            bad(r#"{"image": "x", "env": {"1A": "x"}}"#),
            "config.env.1A"
        );
        assert_eq!(
            bad(r#"{"image": "x", "stop_config": {"signal": "SIGFOO"}}"#),
            "config.stop_config.signal"
        );
        assert_eq!(
            bad(r#"{"image": "x", "services": [{"internal_port": 8080,
                    "concurrency": {"soft_limit": 30, "hard_limit": 25}}]}"#),
            "config.services[0].concurrency.soft_limit"
        );
        assert_eq!(
            bad(r#"{"image": "x", "services": [{"internal_port": 8080,
                    "concurrency": {"hard_limit": 0}}]}"#),
            "config.services[0].concurrency.hard_limit"
        );
        assert_eq!(
            bad(r#"{"image": "x", "services": [{"internal_port": 8080,
                    "concurrency": {"type": "bytes"}}]}"#),
            "config.services[0].concurrency.type"
        );
        let err = serde_json::from_str::<MachineConfig>(r#"{"restart": {"policy": "sometimes"}}"#);
        assert!(err.is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5y"), None);
    }
}
