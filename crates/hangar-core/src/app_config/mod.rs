//! `hangar.toml`: an app's deploy configuration, kept in the app's directory
//! like Fly's `fly.toml`, with Fly's key names so a `fly.toml` works as is.
//!
//! What it says: the app's services (the port it listens on, the checks
//! that gate routing to a new machine), top-level checks (monitoring only,
//! as in Fly), the rollout strategy, the machine size and the machine count.
//! Keys Fly has and Hangar does not act on yet are accepted and reported in
//! [`AppConfig::warnings`]; any other unknown key is an error. Every error
//! names the key and its line.
//!
//! Parsing walks toml's spanned document tree ([`toml::de::DeTable`]) by
//! hand rather than through serde: that is what gives every value its line,
//! the "did you mean" for mistyped keys, and Fly's loose value types
//! (`auto_stop_machines = true | "suspend"`, `memory = "1gb" | 1024`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use crate::check::{
    Check, CheckKind, DEFAULT_CHECK_GRACE_PERIOD, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT,
};
use crate::machine::{self, Autostop, Concurrency, Guest, Port};

mod parse;
#[cfg(test)]
mod tests;

use parse::{Parser, Table};

/// The file's name in the app's directory.
pub const FILE_NAME: &str = "hangar.toml";

/// An app's deploy configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// The app the file is for, if it says; see [`AppConfig::check_app`].
    pub app: Option<String>,
    /// How a new release replaces the running one.
    pub deploy: DeployConfig,
    /// Network services, `[http_service]` first then `[[services]]`; their
    /// checks gate routing. Never empty: a file that declares none gets
    /// the default service, so adding a `hangar.toml` to set the machine
    /// count does not make a web app unreachable.
    pub services: Vec<ServiceConfig>,
    /// Top-level `[checks.NAME]`: monitored and reported, never gating routing.
    pub checks: Vec<NamedCheck>,
    /// Size of every machine of the app (`[[vm]]`); None leaves the node's
    /// default size.
    pub guest: Option<Guest>,
    /// How many machines run the app (`[scale] count`).
    pub count: u32,
    /// Keys Fly knows that Hangar ignores, one line each, naming the line.
    pub warnings: Vec<String>,
    /// Line of `app`, for the error of [`AppConfig::check_app`].
    app_line: usize,
}

/// The `[deploy]` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeployConfig {
    /// How old machines are replaced.
    pub strategy: Strategy,
    /// How many machines a rolling deploy replaces at a time.
    pub max_unavailable: MaxUnavailable,
    /// How long a new machine has to pass its checks before the deploy fails.
    pub wait_timeout: Duration,
    /// How long a replaced machine keeps finishing in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            strategy: Strategy::Rolling,
            max_unavailable: MaxUnavailable::default(),
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// `[deploy] wait_timeout` when the file names none (Fly's).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(300);
/// `[deploy] drain_timeout` when the file names none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A deploy strategy, as in Fly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Replace machines a few at a time (`max_unavailable`), each new one
    /// passing its checks before the next batch.
    #[default]
    Rolling,
    /// Start a full set of new machines, switch routes once all pass, then
    /// stop the old set.
    BlueGreen,
    /// Start one new machine first; if it passes, go on as rolling.
    Canary,
    /// Replace every machine at once, without waiting for checks.
    Immediate,
}

impl Strategy {
    /// The name used in `hangar.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "bluegreen",
            Strategy::Canary => "canary",
            Strategy::Immediate => "immediate",
        }
    }
}

/// How many machines a rolling deploy may have down at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnavailable {
    /// A fraction of the machines, in (0, 1].
    Fraction(f64),
    /// A number of machines, at least 1.
    Count(u32),
}

impl Default for MaxUnavailable {
    /// Fly's default: a third of the machines.
    fn default() -> Self {
        MaxUnavailable::Fraction(0.33)
    }
}

impl MaxUnavailable {
    /// Machines replaced per batch out of `machines`: at least one (when
    /// there are any) and at most all.
    pub fn of(self, machines: u32) -> u32 {
        let n = match self {
            MaxUnavailable::Fraction(f) => (f64::from(machines) * f).ceil() as u32,
            MaxUnavailable::Count(n) => n,
        };
        n.clamp(machines.min(1), machines)
    }
}

/// A `[[services]]` entry (or the `[http_service]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The port the app listens on in Fly; Hangar's machines listen on
    /// `$PORT` (they share the host's network), which checks then target.
    pub internal_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Public ports and handlers (the `[http_service]` has Fly's 80 and 443).
    pub ports: Vec<Port>,
    /// `auto_stop_machines`: stop or suspend idle machines.
    pub autostop: Option<Autostop>,
    /// `auto_start_machines`: start a machine when a request finds none.
    pub autostart: Option<bool>,
    /// Machines autostop leaves running.
    pub min_machines_running: Option<u32>,
    /// Concurrency limits for load balancing.
    pub concurrency: Option<Concurrency>,
    /// Hangar's extension: idle time before autostop acts (at least 1 s).
    pub idle_timeout: Option<Duration>,
    /// Checks a machine passes before it is routed to (Fly's
    /// `http_checks`, `tcp_checks` and `[[http_service.checks]]`).
    pub checks: Vec<Check>,
}

impl Default for ServiceConfig {
    /// What an app gets with no `hangar.toml`: an HTTP service on Fly's
    /// usual port (served on `$PORT`) that is routed once it accepts
    /// connections.
    fn default() -> Self {
        ServiceConfig {
            internal_port: 8080,
            protocol: "tcp".into(),
            ports: http_service_ports(),
            autostop: None,
            autostart: None,
            min_machines_running: None,
            concurrency: None,
            idle_timeout: None,
            checks: vec![Check::new(CheckKind::Tcp)],
        }
    }
}

impl ServiceConfig {
    /// The Machines API's shape of this service (which has no checks:
    /// the rollout reads them from here).
    pub fn to_machine(&self) -> machine::Service {
        machine::Service {
            protocol: self.protocol.clone(),
            internal_port: self.internal_port,
            ports: self.ports.clone(),
            autostart: self.autostart,
            autostop: self.autostop,
            min_machines_running: self.min_machines_running,
            concurrency: self.concurrency.clone(),
            idle_timeout: self.idle_timeout.map(duration_string),
            checks: self.checks.iter().map(machine::Check::from).collect(),
        }
    }
}

fn http_service_ports() -> Vec<Port> {
    let port = |port, handlers: &[&str]| Port {
        port: Some(port),
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
        force_https: None,
    };
    vec![port(80, &["http"]), port(443, &["tls", "http"])]
}

/// A top-level `[checks.NAME]` (monitoring only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCheck {
    /// The table's name, as reported in the machine's checks.
    pub name: String,
    /// The check.
    pub check: Check,
}

impl Default for AppConfig {
    /// The configuration of an app without `hangar.toml`: one rolling
    /// machine of the default size serving the default service.
    fn default() -> Self {
        AppConfig {
            app: None,
            deploy: DeployConfig::default(),
            services: vec![ServiceConfig::default()],
            checks: Vec::new(),
            guest: None,
            count: 1,
            warnings: Vec::new(),
            app_line: 0,
        }
    }
}

impl AppConfig {
    /// Parses and validates the text of a `hangar.toml`.
    pub fn parse(text: &str) -> Result<AppConfig, ConfigError> {
        let root = DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
        let mut p = Parser {
            src: text,
            warnings: Vec::new(),
        };
        let root = Table::new(String::new(), root.span(), root.get_ref());
        p.parse_root(&root)
    }

    /// [`AppConfig::parse`], then [`AppConfig::check_app`]: the file as
    /// deploying it to app `deployed` reads it (the CLI and the builder).
    pub fn parse_for(text: &str, deployed: &str) -> Result<AppConfig, ConfigError> {
        let config = AppConfig::parse(text)?;
        config.check_app(deployed)?;
        Ok(config)
    }

    /// Errs when the file names an app other than `deployed`.
    pub fn check_app(&self, deployed: &str) -> Result<(), ConfigError> {
        match &self.app {
            Some(app) if app != deployed => Err(ConfigError::Invalid {
                line: self.app_line,
                column: 1,
                key: "app".into(),
                message: format!("this file is for app {app:?}, not {deployed:?}"),
            }),
            _ => Ok(()),
        }
    }

    /// The services in the Machines API's shape.
    pub fn machine_services(&self) -> Vec<machine::Service> {
        self.services
            .iter()
            .map(ServiceConfig::to_machine)
            .collect()
    }

    /// The configuration of each machine of a release of this app:
    /// `image`, the services with their checks, the top-level checks, and
    /// the `[[vm]]` size or else `default_guest`.
    pub fn machine_config(&self, image: &str, default_guest: &Guest) -> machine::MachineConfig {
        machine::MachineConfig {
            image: image.to_owned(),
            guest: Some(self.guest.clone().unwrap_or_else(|| default_guest.clone())),
            services: self.machine_services(),
            checks: self.machine_checks(),
            ..machine::MachineConfig::default()
        }
    }

    /// The top-level checks in the Machines API's shape.
    pub fn machine_checks(&self) -> BTreeMap<String, machine::Check> {
        self.checks
            .iter()
            .map(|c| (c.name.clone(), machine::Check::from(&c.check)))
            .collect()
    }
}

/// An invalid `hangar.toml`; the message names the line and, unless the
/// TOML itself is malformed, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML.
    #[error("hangar.toml line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid TOML, but a key is unknown or a value is wrong.
    #[error("hangar.toml line {line}: {key}: {message}")]
    Invalid {
        line: usize,
        column: usize,
        /// The key's path, e.g. `services[0].http_checks[1].interval`.
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error is on.
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// The key's path, if the TOML parsed.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn syntax_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = line_col(src, e.span().map_or(0, |s| s.start));
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Syntax {
        line,
        column,
        message,
    }
}

/// Formats a duration the way [`machine::parse_duration`] reads it.
fn duration_string(d: Duration) -> String {
    crate::duration::format(d)
}

/// Parses a memory size: `"512mb"`, `"1gb"`, `"1.5gb"`, `"2048"` (MB).
pub fn parse_memory_mb(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..split].parse().ok()?;
    let unit = match s[split..].trim() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        _ => return None,
    };
    let mb = n * unit;
    (mb.fract() == 0.0 && mb >= 0.0 && mb < u64::MAX as f64).then_some(mb as u64)
}

/// Fly's machine size presets: (name, cpu_kind, cpus, memory_mb).
const SIZES: &[(&str, &str, u32, u64)] = &[
    ("shared-cpu-1x", "shared", 1, 256),
    ("shared-cpu-2x", "shared", 2, 512),
    ("shared-cpu-4x", "shared", 4, 1024),
    ("shared-cpu-8x", "shared", 8, 2048),
    ("performance-1x", "performance", 1, 2048),
    ("performance-2x", "performance", 2, 4096),
    ("performance-4x", "performance", 4, 8192),
    ("performance-8x", "performance", 8, 16384),
    ("performance-16x", "performance", 16, 32768),
];

const DURATION_HINT: &str = "(e.g. \"10s\", \"500ms\", \"5m\")";
