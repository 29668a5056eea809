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

use crate::machine::{self, Autostop, Concurrency, Guest, Port};

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
            checks: self.checks.iter().map(Check::to_machine).collect(),
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

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// HTTP request or TCP connect.
    pub kind: CheckKind,
    /// Port checked; `None` is the service's (for top-level checks, the
    /// app's `$PORT`).
    pub port: Option<u16>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take; shorter than `interval`.
    pub timeout: Duration,
    /// Time after start before failures count.
    pub grace_period: Duration,
}

/// Default check interval.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default check grace period.
pub const DEFAULT_CHECK_GRACE_PERIOD: Duration = Duration::from_secs(1);

impl Check {
    /// A check of `kind` with the default port and timings.
    pub fn new(kind: CheckKind) -> Check {
        Check {
            kind,
            port: None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            grace_period: DEFAULT_CHECK_GRACE_PERIOD,
        }
    }

    /// The Machines API's shape of this check.
    pub fn to_machine(&self) -> machine::Check {
        let (kind, method, path) = match &self.kind {
            CheckKind::Tcp => ("tcp", None, None),
            CheckKind::Http { method, path } => ("http", Some(method.clone()), Some(path.clone())),
        };
        machine::Check {
            kind: kind.into(),
            port: self.port,
            interval: Some(duration_string(self.interval)),
            timeout: Some(duration_string(self.timeout)),
            grace_period: Some(duration_string(self.grace_period)),
            method,
            path,
        }
    }
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Passes when a TCP connection is accepted.
    Tcp,
    /// Passes on a 2xx answer to `method path`.
    Http {
        /// Upper-case method token, `GET` by default.
        method: String,
        /// Absolute path, `/` by default.
        path: String,
    },
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
            .map(|c| (c.name.clone(), c.check.to_machine()))
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

/// The keys of each table: (known, ignored on purpose). Ignored keys are
/// Fly's; they draw a warning unless empty.
const ROOT_KEYS: &[&str] = &[
    "app",
    "deploy",
    "http_service",
    "services",
    "checks",
    "vm",
    "scale",
];
const ROOT_IGNORED: &[&str] = &[
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "console_command",
    "swap_size_mb",
    "build",
    "env",
    "mounts",
    "statics",
    "processes",
    "metrics",
    "files",
    "restart",
    "experimental",
];
const DEPLOY_KEYS: &[&str] = &[
    "strategy",
    "max_unavailable",
    "wait_timeout",
    "drain_timeout",
];
const DEPLOY_IGNORED: &[&str] = &[
    "release_command",
    "release_command_timeout",
    "release_command_vm",
];
const SERVICE_KEYS: &[&str] = &[
    "internal_port",
    "protocol",
    "ports",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "concurrency",
    "idle_timeout",
    "http_checks",
    "tcp_checks",
];
const SERVICE_IGNORED: &[&str] = &["processes", "script_checks", "machine_checks"];
const HTTP_SERVICE_KEYS: &[&str] = &[
    "internal_port",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "concurrency",
    "idle_timeout",
    "checks",
];
const HTTP_SERVICE_IGNORED: &[&str] = &[
    "force_https",
    "processes",
    "http_options",
    "tls_options",
    "machine_checks",
];
const PORT_KEYS: &[&str] = &["port", "handlers"];
const PORT_IGNORED: &[&str] = &[
    "force_https",
    "start_port",
    "end_port",
    "tls_options",
    "http_options",
    "proxy_proto_options",
];
const CONCURRENCY_KEYS: &[&str] = &["type", "soft_limit", "hard_limit"];
const CHECK_IGNORED: &[&str] = &[
    "protocol",
    "tls_skip_verify",
    "tls_server_name",
    "headers",
    "restart_limit",
    "processes",
];
const VM_KEYS: &[&str] = &[
    "size",
    "memory",
    "memory_mb",
    "cpus",
    "cpu_kind",
    "gpus",
    "gpu_kind",
];
const VM_IGNORED: &[&str] = &[
    "processes",
    "host_dedication_id",
    "kernel_args",
    "persist_rootfs",
];
const SCALE_KEYS: &[&str] = &["count"];

/// Where a check is declared, which decides its keys.
#[derive(Clone, Copy, PartialEq)]
enum CheckSite {
    /// `[[services.http_checks]]` or `[[http_service.checks]]`.
    ServiceHttp,
    /// `[[services.tcp_checks]]`.
    ServiceTcp,
    /// `[checks.NAME]`, with `type` and `port`.
    TopLevel,
}

type Value<'i> = Spanned<DeValue<'i>>;

/// A table being read: its key path, span and entries in source order.
struct Table<'a, 'i> {
    path: String,
    span: Range<usize>,
    entries: Vec<(&'a str, Range<usize>, &'a Value<'i>)>,
}

impl<'a, 'i> Table<'a, 'i> {
    fn new(path: String, span: Range<usize>, table: &'a DeTable<'i>) -> Self {
        let mut entries: Vec<_> = table
            .iter()
            .map(|(k, v): (&'a Spanned<Cow<'i, str>>, &'a Value<'i>)| {
                (k.get_ref().as_ref(), k.span(), v)
            })
            .collect();
        entries.sort_by_key(|(_, span, _)| span.start);
        Table {
            path,
            span,
            entries,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value<'i>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, _, v)| *v)
    }
}

struct Parser<'s> {
    src: &'s str,
    warnings: Vec<String>,
}

fn a_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(..) => "a string",
        DeValue::Integer(..) => "an integer",
        DeValue::Float(..) => "a float",
        DeValue::Boolean(..) => "a boolean",
        DeValue::Datetime(..) => "a date",
        DeValue::Array(..) => "an array",
        DeValue::Table(..) => "a table",
    }
}

fn as_i64(v: &DeValue<'_>) -> Option<i64> {
    let i = v.as_integer()?;
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// Whether an ignored key is worth no warning: an empty table or array
/// (`fly launch` writes `[build]`), or `processes = ["app"]` (the only
/// process group there is without `[processes]`).
fn is_noop(key: &str, v: &DeValue<'_>) -> bool {
    match v {
        DeValue::Table(t) => t.is_empty(),
        DeValue::Array(a) => {
            a.is_empty()
                || (key == "processes" && a.len() == 1 && a[0].get_ref().as_str() == Some("app"))
        }
        _ => false,
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key closest to `key`, if a typo away.
fn suggest<'k>(key: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let norm = key.to_ascii_lowercase().replace('-', "_");
    known
        .map(|k| (edit_distance(&norm, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

impl<'s> Parser<'s> {
    fn err(&self, at: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.src, at.start);
        ConfigError::Invalid {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, at: &Range<usize>, message: String) {
        let (line, _) = line_col(self.src, at.start);
        self.warnings
            .push(format!("{FILE_NAME} line {line}: {message}"));
    }

    fn type_err(&self, t: &Table, name: &str, v: &Value, expected: &str) -> ConfigError {
        self.err(
            &v.span(),
            &t.key(name),
            format!("expected {expected}, found {}", a_type(v.get_ref())),
        )
    }

    /// Errs on the first unknown key (in source order) and warns about
    /// ignored ones.
    fn check_keys(
        &mut self,
        t: &Table,
        known: &[&str],
        ignored: &[&str],
    ) -> Result<(), ConfigError> {
        for (k, span, v) in &t.entries {
            if known.contains(k) {
                continue;
            }
            if ignored.contains(k) {
                if !is_noop(k, v.get_ref()) {
                    self.warn(
                        span,
                        format!("{} is not supported yet and is ignored", t.key(k)),
                    );
                }
                continue;
            }
            let hint = match suggest(k, known.iter().chain(ignored).copied()) {
                Some(s) => format!("did you mean {s}?"),
                None => format!("known keys are {}", known.join(", ")),
            };
            return Err(self.err(span, &t.key(k), format!("unknown key; {hint}")));
        }
        Ok(())
    }

    fn string<'a>(
        &self,
        t: &Table<'a, '_>,
        name: &str,
    ) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(None);
        };
        match v.get_ref().as_str() {
            Some(s) => Ok(Some((s, v.span()))),
            None => Err(self.type_err(t, name, v, "a string")),
        }
    }

    fn boolean(&self, t: &Table, name: &str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(None);
        };
        match v.get_ref().as_bool() {
            Some(b) => Ok(Some(b)),
            None => Err(self.type_err(t, name, v, "true or false")),
        }
    }

    /// An integer in `lo..=hi`.
    fn int<T: TryFrom<i64>>(
        &self,
        t: &Table,
        name: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Option<(T, Range<usize>)>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(None);
        };
        let Some(n) = as_i64(v.get_ref()) else {
            return Err(self.type_err(t, name, v, "an integer"));
        };
        match T::try_from(n) {
            Ok(x) if (lo..=hi).contains(&n) => Ok(Some((x, v.span()))),
            _ => Err(self.err(
                &v.span(),
                &t.key(name),
                format!("must be {lo} to {hi}, not {n}"),
            )),
        }
    }

    /// A duration string, or an integer of seconds.
    fn duration(
        &self,
        t: &Table,
        name: &str,
    ) -> Result<Option<(Duration, Range<usize>)>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(None);
        };
        let d = match v.get_ref() {
            DeValue::String(s) => machine::parse_duration(s).ok_or_else(|| {
                self.err(
                    &v.span(),
                    &t.key(name),
                    format!("{s:?} is not a duration {DURATION_HINT}"),
                )
            })?,
            DeValue::Integer(_) => match as_i64(v.get_ref()) {
                Some(n) if n >= 0 => Duration::from_secs(n.unsigned_abs()),
                _ => {
                    return Err(self.err(
                        &v.span(),
                        &t.key(name),
                        format!(
                            "{} is not a duration {DURATION_HINT}",
                            v.get_ref().as_integer().map_or("", |i| i.as_str())
                        ),
                    ));
                }
            },
            _ => return Err(self.type_err(t, name, v, "a duration such as \"10s\"")),
        };
        // Every duration a tenant writes is bounded; keys with a tighter
        // range check it after.
        let d = crate::duration::Bounds::at_least(Duration::ZERO)
            .check(d)
            .map_err(|why| self.err(&v.span(), &t.key(name), why))?;
        Ok(Some((d, v.span())))
    }

    fn table<'a, 'i>(
        &self,
        t: &Table<'a, 'i>,
        name: &str,
    ) -> Result<Option<Table<'a, 'i>>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::Table(inner) => Ok(Some(Table::new(t.key(name), v.span(), inner))),
            _ => Err(self.type_err(t, name, v, "a table")),
        }
    }

    /// An array of tables (`[[name]]`), or one table (`[name]`).
    fn tables<'a, 'i>(
        &self,
        t: &Table<'a, 'i>,
        name: &str,
    ) -> Result<Vec<Table<'a, 'i>>, ConfigError> {
        let Some(v) = t.get(name) else {
            return Ok(Vec::new());
        };
        match v.get_ref() {
            DeValue::Table(inner) => Ok(vec![Table::new(t.key(name), v.span(), inner)]),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("{}[{i}]", t.key(name));
                    match item.get_ref() {
                        DeValue::Table(inner) => Ok(Table::new(path, item.span(), inner)),
                        other => Err(self.err(
                            &item.span(),
                            &path,
                            format!("expected a table, found {}", a_type(other)),
                        )),
                    }
                })
                .collect(),
            _ => Err(self.type_err(t, name, v, "a table or an array of tables")),
        }
    }

    fn parse_root(&mut self, root: &Table) -> Result<AppConfig, ConfigError> {
        self.check_keys(root, ROOT_KEYS, ROOT_IGNORED)?;
        let mut config = AppConfig::default();
        if let Some((app, span)) = self.string(root, "app")? {
            config.app = Some(app.to_string());
            config.app_line = line_col(self.src, span.start).0;
        }
        if let Some(deploy) = self.table(root, "deploy")? {
            config.deploy = self.parse_deploy(&deploy)?;
        }
        let mut services = Vec::new();
        if let Some(http) = self.table(root, "http_service")? {
            services.push(self.parse_service(&http, true)?);
        }
        for s in self.tables(root, "services")? {
            services.push(self.parse_service(&s, false)?);
        }
        if !services.is_empty() {
            config.services = services;
        }
        if let Some(checks) = self.table(root, "checks")? {
            for (name, _, v) in &checks.entries {
                let DeValue::Table(inner) = v.get_ref() else {
                    return Err(self.type_err(&checks, name, v, "a table"));
                };
                let t = Table::new(checks.key(name), v.span(), inner);
                config.checks.push(NamedCheck {
                    name: name.to_string(),
                    check: self.parse_check(&t, CheckSite::TopLevel)?,
                });
            }
        }
        let vms = self.tables(root, "vm")?;
        if let Some(extra) = vms.get(1) {
            return Err(self.err(
                &extra.span,
                &extra.path,
                "only one [[vm]] is supported: every machine of the app has the same size",
            ));
        }
        if let Some(vm) = vms.first() {
            config.guest = Some(self.parse_vm(vm)?);
        }
        if let Some(scale) = self.table(root, "scale")? {
            self.check_keys(&scale, SCALE_KEYS, &[])?;
            if let Some((count, _)) = self.int(&scale, "count", 1, 100)? {
                config.count = count;
            }
        }
        config.warnings = std::mem::take(&mut self.warnings);
        Ok(config)
    }

    fn parse_deploy(&mut self, t: &Table) -> Result<DeployConfig, ConfigError> {
        self.check_keys(t, DEPLOY_KEYS, DEPLOY_IGNORED)?;
        let mut d = DeployConfig::default();
        if let Some((s, span)) = self.string(t, "strategy")? {
            d.strategy = match s {
                "rolling" => Strategy::Rolling,
                "bluegreen" => Strategy::BlueGreen,
                "canary" => Strategy::Canary,
                "immediate" => Strategy::Immediate,
                _ => {
                    return Err(self.err(
                        &span,
                        &t.key("strategy"),
                        format!(
                            "unknown strategy {s:?}; use rolling, bluegreen, canary or immediate"
                        ),
                    ));
                }
            };
        }
        if let Some(v) = t.get("max_unavailable") {
            let key = t.key("max_unavailable");
            let bad = |shown: &str| {
                self.err(
                    &v.span(),
                    &key,
                    format!(
                        "must be a fraction of the machines in (0, 1] or a count of at least 1, not {shown}"
                    ),
                )
            };
            d.max_unavailable = match v.get_ref() {
                DeValue::Integer(i) => match as_i64(v.get_ref()).map(u32::try_from) {
                    Some(Ok(n)) if n >= 1 => MaxUnavailable::Count(n),
                    _ => return Err(bad(i.as_str())),
                },
                DeValue::Float(f) => match f.as_str().parse::<f64>() {
                    Ok(x) if x > 0.0 && x <= 1.0 => MaxUnavailable::Fraction(x),
                    _ => return Err(bad(f.as_str())),
                },
                _ => return Err(self.type_err(t, "max_unavailable", v, "a number")),
            };
            if d.strategy != Strategy::Rolling {
                self.warn(
                    &v.span(),
                    format!(
                        "{key} applies to the rolling strategy only and is ignored by {}",
                        d.strategy.as_str()
                    ),
                );
            }
        }
        if let Some((w, span)) = self.duration(t, "wait_timeout")? {
            if w.is_zero() {
                return Err(self.err(&span, &t.key("wait_timeout"), "must be longer than 0s"));
            }
            d.wait_timeout = w;
        }
        if let Some((w, _)) = self.duration(t, "drain_timeout")? {
            d.drain_timeout = w;
        }
        Ok(d)
    }

    fn parse_service(&mut self, t: &Table, http: bool) -> Result<ServiceConfig, ConfigError> {
        if http {
            self.check_keys(t, HTTP_SERVICE_KEYS, HTTP_SERVICE_IGNORED)?;
        } else {
            self.check_keys(t, SERVICE_KEYS, SERVICE_IGNORED)?;
        }
        let Some((internal_port, _)) = self.int(t, "internal_port", 1, 65535)? else {
            return Err(self.err(
                &t.span,
                &t.key("internal_port"),
                "is required: the port the app listens on",
            ));
        };
        let mut s = ServiceConfig {
            internal_port,
            checks: Vec::new(),
            ..ServiceConfig::default()
        };
        if !http {
            s.ports = Vec::new();
            if let Some((protocol, span)) = self.string(t, "protocol")? {
                if !matches!(protocol, "tcp" | "udp") {
                    return Err(self.err(
                        &span,
                        &t.key("protocol"),
                        format!("must be \"tcp\" or \"udp\", not {protocol:?}"),
                    ));
                }
                s.protocol = protocol.to_string();
            }
            for port in self.tables(t, "ports")? {
                s.ports.push(self.parse_port(&port)?);
            }
        }
        if let Some(v) = t.get("auto_stop_machines") {
            s.autostop = Some(match v.get_ref() {
                DeValue::Boolean(true) => Autostop::Stop,
                DeValue::Boolean(false) => Autostop::Off,
                DeValue::String(x) if x == "off" => Autostop::Off,
                DeValue::String(x) if x == "stop" => Autostop::Stop,
                DeValue::String(x) if x == "suspend" => Autostop::Suspend,
                _ => {
                    return Err(self.err(
                        &v.span(),
                        &t.key("auto_stop_machines"),
                        "must be \"off\", \"stop\", \"suspend\", true or false",
                    ));
                }
            });
        }
        s.autostart = self.boolean(t, "auto_start_machines")?;
        s.min_machines_running = self.int(t, "min_machines_running", 0, 100)?.map(|(n, _)| n);
        if let Some((d, span)) = self.duration(t, "idle_timeout")? {
            if d < Duration::from_secs(1) {
                return Err(self.err(&span, &t.key("idle_timeout"), "must be at least 1s"));
            }
            s.idle_timeout = Some(d);
        }
        if let Some(c) = self.table(t, "concurrency")? {
            s.concurrency = Some(self.parse_concurrency(&c)?);
        }
        let sites: &[(&str, CheckSite)] = if http {
            &[("checks", CheckSite::ServiceHttp)]
        } else {
            &[
                ("http_checks", CheckSite::ServiceHttp),
                ("tcp_checks", CheckSite::ServiceTcp),
            ]
        };
        for (name, site) in sites {
            for c in self.tables(t, name)? {
                s.checks.push(self.parse_check(&c, *site)?);
            }
        }
        Ok(s)
    }

    fn parse_port(&mut self, t: &Table) -> Result<Port, ConfigError> {
        self.check_keys(t, PORT_KEYS, PORT_IGNORED)?;
        let port = self.int(t, "port", 1, 65535)?.map(|(p, _)| p);
        let mut handlers = Vec::new();
        if let Some(v) = t.get("handlers") {
            let DeValue::Array(items) = v.get_ref() else {
                return Err(self.type_err(t, "handlers", v, "an array of strings"));
            };
            for (i, item) in items.iter().enumerate() {
                match item.get_ref().as_str() {
                    Some(h) => handlers.push(h.to_string()),
                    None => {
                        return Err(self.err(
                            &item.span(),
                            &format!("{}[{i}]", t.key("handlers")),
                            format!("expected a string, found {}", a_type(item.get_ref())),
                        ));
                    }
                }
            }
        }
        Ok(Port {
            port,
            handlers,
            force_https: None,
        })
    }

    fn parse_concurrency(&mut self, t: &Table) -> Result<Concurrency, ConfigError> {
        self.check_keys(t, CONCURRENCY_KEYS, &[])?;
        let mut c = Concurrency {
            kind: "requests".into(),
            soft_limit: None,
            hard_limit: None,
        };
        if let Some((kind, span)) = self.string(t, "type")? {
            if !matches!(kind, "requests" | "connections") {
                return Err(self.err(
                    &span,
                    &t.key("type"),
                    format!("must be \"requests\" or \"connections\", not {kind:?}"),
                ));
            }
            c.kind = kind.to_string();
        }
        let soft = self.int::<u32>(t, "soft_limit", 0, i64::from(u32::MAX))?;
        let hard = self.int::<u32>(t, "hard_limit", 1, i64::from(u32::MAX))?;
        if let (Some((s, span)), Some((h, _))) = (&soft, &hard)
            && s > h
        {
            return Err(self.err(
                span,
                &t.key("soft_limit"),
                format!("{s} is above hard_limit {h}"),
            ));
        }
        c.soft_limit = soft.map(|(n, _)| n);
        c.hard_limit = hard.map(|(n, _)| n);
        Ok(c)
    }

    fn parse_check(&mut self, t: &Table, site: CheckSite) -> Result<Check, ConfigError> {
        let mut known = vec!["interval", "timeout", "grace_period"];
        let kind_is_http = match site {
            CheckSite::ServiceHttp => true,
            CheckSite::ServiceTcp => false,
            CheckSite::TopLevel => {
                known.extend(["type", "port"]);
                match self.string(t, "type")? {
                    None => false,
                    Some(("http", _)) => true,
                    Some(("tcp", _)) => false,
                    Some((other, span)) => {
                        return Err(self.err(
                            &span,
                            &t.key("type"),
                            format!("must be \"http\" or \"tcp\", not {other:?}"),
                        ));
                    }
                }
            }
        };
        if kind_is_http {
            known.extend(["method", "path"]);
        } else if let Some((k, span, _)) = t
            .entries
            .iter()
            .find(|(k, _, _)| matches!(*k, "method" | "path"))
        {
            let fix = if site == CheckSite::TopLevel {
                "add type = \"http\""
            } else {
                "declare it in [[services.http_checks]]"
            };
            return Err(self.err(
                span,
                &t.key(k),
                format!("only HTTP checks have a {k}; {fix}"),
            ));
        }
        self.check_keys(t, &known, CHECK_IGNORED)?;

        let mut check = Check::new(CheckKind::Tcp);
        check.port = self.int(t, "port", 1, 65535)?.map(|(p, _)| p);
        let interval = self.duration(t, "interval")?;
        let timeout = self.duration(t, "timeout")?;
        if let Some((g, _)) = self.duration(t, "grace_period")? {
            check.grace_period = g;
        }
        if let Some((d, _)) = interval {
            check.interval = d;
        }
        if let Some((d, span)) = &timeout {
            if d.is_zero() {
                return Err(self.err(span, &t.key("timeout"), "must be longer than 0s"));
            }
            check.timeout = *d;
        }
        if check.timeout >= check.interval {
            let (span, key) = match (&timeout, &interval) {
                (Some((_, span)), _) => (span.clone(), "timeout"),
                (None, Some((_, span))) => (span.clone(), "interval"),
                (None, None) => unreachable!("the defaults are consistent"),
            };
            return Err(self.err(
                &span,
                &t.key(key),
                format!(
                    "timeout ({}) must be shorter than interval ({})",
                    duration_string(check.timeout),
                    duration_string(check.interval)
                ),
            ));
        }
        if kind_is_http {
            let mut method = "GET".to_string();
            if let Some((m, span)) = self.string(t, "method")? {
                let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                if m.is_empty() || !m.chars().all(token) {
                    return Err(self.err(
                        &span,
                        &t.key("method"),
                        format!("{m:?} is not an HTTP method (e.g. \"GET\", \"HEAD\")"),
                    ));
                }
                method = m.to_ascii_uppercase();
            }
            let mut path = "/".to_string();
            if let Some((p, span)) = self.string(t, "path")? {
                if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(self.err(
                        &span,
                        &t.key("path"),
                        format!("{p:?} must start with '/' and have no spaces"),
                    ));
                }
                path = p.to_string();
            }
            check.kind = CheckKind::Http { method, path };
        }
        Ok(check)
    }

    fn parse_vm(&mut self, t: &Table) -> Result<Guest, ConfigError> {
        self.check_keys(t, VM_KEYS, VM_IGNORED)?;
        let mut g = Guest::default();
        if let Some((size, span)) = self.string(t, "size")? {
            let Some((_, kind, cpus, memory)) = SIZES.iter().find(|(n, ..)| *n == size) else {
                let names: Vec<&str> = SIZES.iter().map(|(n, ..)| *n).collect();
                return Err(self.err(
                    &span,
                    &t.key("size"),
                    format!("unknown size {size:?}; use one of {}", names.join(", ")),
                ));
            };
            g.cpu_kind = kind.to_string();
            g.cpus = *cpus;
            g.memory_mb = *memory;
        }
        if let Some((kind, span)) = self.string(t, "cpu_kind")? {
            if !matches!(kind, "shared" | "performance") {
                return Err(self.err(
                    &span,
                    &t.key("cpu_kind"),
                    format!("must be \"shared\" or \"performance\", not {kind:?}"),
                ));
            }
            g.cpu_kind = kind.to_string();
        }
        if let Some((cpus, _)) = self.int(t, "cpus", 1, 64)? {
            g.cpus = cpus;
        }
        let memory = match (t.get("memory"), t.get("memory_mb")) {
            (Some(_), Some(v)) => {
                return Err(self.err(
                    &v.span(),
                    &t.key("memory_mb"),
                    "set memory or memory_mb, not both",
                ));
            }
            (Some(v), None) => {
                let mb = match v.get_ref() {
                    DeValue::String(s) => parse_memory_mb(s).ok_or_else(|| {
                        self.err(
                            &v.span(),
                            &t.key("memory"),
                            format!("{s:?} is not a size (e.g. \"512mb\", \"1gb\")"),
                        )
                    })?,
                    DeValue::Integer(_) => self
                        .int::<u64>(t, "memory", 0, i64::MAX)?
                        .map_or(0, |(n, _)| n),
                    _ => return Err(self.type_err(t, "memory", v, "a size such as \"512mb\"")),
                };
                Some((mb, v.span(), "memory"))
            }
            (None, Some(v)) => self
                .int::<u64>(t, "memory_mb", 0, i64::MAX)?
                .map(|(n, _)| (n, v.span(), "memory_mb")),
            (None, None) => None,
        };
        if let Some((mb, span, key)) = memory {
            if !(64..=1024 * 1024).contains(&mb) {
                return Err(self.err(
                    &span,
                    &t.key(key),
                    format!("must be 64 MB to 1024 GB, not {mb} MB"),
                ));
            }
            g.memory_mb = mb;
        }
        if let Some((gpus, _)) = self.int(t, "gpus", 0, 8)? {
            g.gpus = gpus;
        }
        g.gpu_kind = self.string(t, "gpu_kind")?.map(|(k, _)| k.to_string());
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        AppConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
app = "todo"

[deploy]
strategy = "rolling"
max_unavailable = 0.5
wait_timeout = "2m"
drain_timeout = 10

[[services]]
internal_port = 8080
protocol = "tcp"
auto_stop_machines = "suspend"
auto_start_machines = true
min_machines_running = 1
idle_timeout = "90s"

  [services.concurrency]
  type = "requests"
  soft_limit = 20
  hard_limit = 25

  [[services.ports]]
  port = 443
  handlers = ["tls", "http"]

  [[services.http_checks]]
  interval = "10s"
  timeout = "2s"
  grace_period = "5s"
  method = "head"
  path = "/health"

  [[services.tcp_checks]]
  interval = "15s"
  timeout = "500ms"
  grace_period = 0

[checks.db]
type = "http"
port = 8080
path = "/db"
interval = "30s"
timeout = "5s"

[checks.alive]
type = "tcp"

[[vm]]
size = "shared-cpu-2x"
memory = "1gb"

[scale]
count = 3
"#;
        let c = AppConfig::parse(text).unwrap();
        let expected = AppConfig {
            app: Some("todo".into()),
            deploy: DeployConfig {
                strategy: Strategy::Rolling,
                max_unavailable: MaxUnavailable::Fraction(0.5),
                wait_timeout: Duration::from_secs(120),
                drain_timeout: Duration::from_secs(10),
            },
            services: vec![ServiceConfig {
                internal_port: 8080,
                protocol: "tcp".into(),
                ports: vec![Port {
                    port: Some(443),
                    handlers: vec!["tls".into(), "http".into()],
                    force_https: None,
                }],
                autostop: Some(Autostop::Suspend),
                autostart: Some(true),
                min_machines_running: Some(1),
                concurrency: Some(Concurrency {
                    kind: "requests".into(),
                    soft_limit: Some(20),
                    hard_limit: Some(25),
                }),
                idle_timeout: Some(Duration::from_secs(90)),
                checks: vec![
                    Check {
                        kind: CheckKind::Http {
                            method: "HEAD".into(),
                            path: "/health".into(),
                        },
                        port: None,
                        interval: Duration::from_secs(10),
                        timeout: Duration::from_secs(2),
                        grace_period: Duration::from_secs(5),
                    },
                    Check {
                        kind: CheckKind::Tcp,
                        port: None,
                        interval: Duration::from_secs(15),
                        timeout: Duration::from_millis(500),
                        grace_period: Duration::ZERO,
                    },
                ],
            }],
            checks: vec![
                // In source order, not alphabetical.
                NamedCheck {
                    name: "db".into(),
                    check: Check {
                        kind: CheckKind::Http {
                            method: "GET".into(),
                            path: "/db".into(),
                        },
                        port: Some(8080),
                        interval: Duration::from_secs(30),
                        timeout: Duration::from_secs(5),
                        grace_period: DEFAULT_CHECK_GRACE_PERIOD,
                    },
                },
                NamedCheck {
                    name: "alive".into(),
                    check: Check::new(CheckKind::Tcp),
                },
            ],
            guest: Some(Guest {
                cpu_kind: "shared".into(),
                cpus: 2,
                memory_mb: 1024,
                gpus: 0,
                gpu_kind: None,
            }),
            count: 3,
            warnings: vec![],
            app_line: 2,
        };
        assert_eq!(c, expected);
        c.check_app("todo").unwrap();
        assert_eq!(
            c.check_app("other").unwrap_err().to_string(),
            r#"hangar.toml line 2: app: this file is for app "todo", not "other""#
        );

        let m = c.machine_services();
        assert_eq!(m[0].idle_timeout.as_deref(), Some("90s"));
        assert_eq!(m[0].idle_timeout(), Duration::from_secs(90));
        assert_eq!(m[0].autostop, Some(Autostop::Suspend));
        let checks = c.machine_checks();
        assert_eq!(checks["db"].kind, "http");
        assert_eq!(checks["db"].path.as_deref(), Some("/db"));
        assert_eq!(
            machine::parse_duration(checks["db"].timeout.as_deref().unwrap()),
            Some(Duration::from_secs(5))
        );
        let tcp = c.services[0].checks[1].to_machine();
        assert_eq!(tcp.timeout.as_deref(), Some("500ms"));
        assert_eq!(tcp.method, None);
    }

    #[test]
    fn defaults() {
        let d = AppConfig::default();
        assert_eq!(d.count, 1);
        assert_eq!(d.deploy.strategy, Strategy::Rolling);
        assert_eq!(d.deploy.max_unavailable, MaxUnavailable::Fraction(0.33));
        assert_eq!(d.deploy.wait_timeout, Duration::from_secs(300));
        assert_eq!(d.deploy.drain_timeout, Duration::from_secs(30));
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].checks, vec![Check::new(CheckKind::Tcp)]);
        assert_eq!(d.guest, None);
        assert!(d.checks.is_empty());
        // An empty file, or one that declares no service, is the default.
        assert_eq!(AppConfig::parse("").unwrap(), d);
        let c = AppConfig::parse("[scale]\ncount = 4\n").unwrap();
        assert_eq!(c.count, 4);
        assert_eq!(c.services, d.services);
        // A service without checks has none (nothing implicit is added).
        let c = AppConfig::parse("[[services]]\ninternal_port = 3000\n").unwrap();
        assert_eq!(c.services[0].internal_port, 3000);
        assert!(c.services[0].checks.is_empty());
        assert!(c.services[0].ports.is_empty());
        // An HTTP check with only a path gets the default method and timings.
        let c = AppConfig::parse(
            "[http_service]\ninternal_port = 80\n[[http_service.checks]]\npath = \"/up\"\n",
        )
        .unwrap();
        assert_eq!(
            c.services[0].checks,
            vec![Check::new(CheckKind::Http {
                method: "GET".into(),
                path: "/up".into()
            })]
        );
    }

    #[test]
    fn fly_launch_toml_parses_with_warnings() {
        // What `fly launch` writes for a Rust app.
        let text = r#"# fly.toml app configuration file generated for todo-rs on 2025-03-02T10:11:12+01:00
#
# See https://fly.io/docs/reference/configuration/ for information about how to use this file.
#

app = 'todo-rs'
primary_region = 'ams'

[build]

[env]
  RUST_LOG = 'info'

[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = 'stop'
  auto_start_machines = true
  min_machines_running = 0
  processes = ['app']

[[vm]]
  memory = '1gb'
  cpu_kind = 'shared'
  cpus = 1
"#;
        let c = AppConfig::parse(text).unwrap();
        assert_eq!(c.app.as_deref(), Some("todo-rs"));
        assert_eq!(
            c.warnings,
            [
                "hangar.toml line 7: primary_region is not supported yet and is ignored",
                "hangar.toml line 11: env is not supported yet and is ignored",
                "hangar.toml line 16: http_service.force_https is not supported yet and is ignored",
            ]
        );
        let s = &c.services[0];
        assert_eq!(s.internal_port, 8080);
        assert_eq!(s.autostop, Some(Autostop::Stop));
        assert_eq!(s.autostart, Some(true));
        assert_eq!(s.min_machines_running, Some(0));
        assert_eq!(s.ports, http_service_ports());
        assert!(s.checks.is_empty());
        let guest = c.guest.unwrap();
        assert_eq!(guest.memory_mb, 1024);
        assert_eq!(guest.cpus, 1);
        assert_eq!(c.count, 1);
        assert_eq!(c.deploy, DeployConfig::default());
    }

    #[test]
    fn older_fly_services_toml_parses_with_warnings() {
        // The `[[services]]` template older flyctl versions wrote.
        let text = r#"app = "old-app"
kill_signal = "SIGINT"
kill_timeout = 5
processes = []

[deploy]
  release_command = "migrate"
  strategy = "bluegreen"

[experimental]
  auto_rollback = true

[[services]]
  http_checks = []
  internal_port = 8080
  processes = ["app"]
  protocol = "tcp"
  script_checks = []
  [services.concurrency]
    hard_limit = 25
    soft_limit = 20
    type = "connections"

  [[services.ports]]
    force_https = true
    handlers = ["http"]
    port = 80

  [[services.ports]]
    handlers = ["tls", "http"]
    port = 443

  [[services.tcp_checks]]
    grace_period = "1s"
    interval = "15s"
    restart_limit = 0
    timeout = "2s"
"#;
        let c = AppConfig::parse(text).unwrap();
        assert_eq!(
            c.warnings,
            [
                "hangar.toml line 2: kill_signal is not supported yet and is ignored",
                "hangar.toml line 3: kill_timeout is not supported yet and is ignored",
                "hangar.toml line 10: experimental is not supported yet and is ignored",
                "hangar.toml line 7: deploy.release_command is not supported yet and is ignored",
                "hangar.toml line 25: services[0].ports[0].force_https is not supported yet and is ignored",
                "hangar.toml line 36: services[0].tcp_checks[0].restart_limit is not supported yet and is ignored",
            ]
        );
        assert_eq!(c.deploy.strategy, Strategy::BlueGreen);
        let s = &c.services[0];
        assert_eq!(s.concurrency.as_ref().unwrap().kind, "connections");
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[0].port, Some(80));
        assert_eq!(s.ports[0].force_https, None);
        assert_eq!(s.checks, vec![Check::new(CheckKind::Tcp)]);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        assert_eq!(
            err("app = \"x\"\n\n[deploy]\nstrategy = \"blue-green\"\n"),
            r#"hangar.toml line 4: deploy.strategy: unknown strategy "blue-green"; use rolling, bluegreen, canary or immediate"#
        );
        let text = "[[services]]\ninternal_port = 8080\n\n  [[services.http_checks]]\n  interval = \"10 seconds\"\n";
        assert_eq!(
            err(text),
            r#"hangar.toml line 5: services[0].http_checks[0].interval: "10 seconds" is not a duration (e.g. "10s", "500ms", "5m")"#
        );
        // The second service and its second check.
        let text = "[[services]]\ninternal_port = 1\n[[services]]\ninternal_port = 2\n[[services.tcp_checks]]\n[[services.tcp_checks]]\ninterval = \"1s\"\ntimeout = \"1s\"\n";
        assert_eq!(
            err(text),
            "hangar.toml line 8: services[1].tcp_checks[1].timeout: timeout (1s) must be shorter than interval (1s)"
        );
        // Only the interval given: the error points at it.
        assert_eq!(
            err("[checks.x]\ninterval = \"1s\"\n"),
            "hangar.toml line 2: checks.x.interval: timeout (2s) must be shorter than interval (1s)"
        );
        assert_eq!(
            err("[[services]]\n  internal-port = 8080\n"),
            "hangar.toml line 2: services[0].internal-port: unknown key; did you mean internal_port?"
        );
        assert_eq!(
            err("[deploy]\nstratgy = \"canary\"\n"),
            "hangar.toml line 2: deploy.stratgy: unknown key; did you mean strategy?"
        );
        assert_eq!(
            err("[scale]\nreplicas = 2\n"),
            "hangar.toml line 2: scale.replicas: unknown key; known keys are count"
        );
        assert_eq!(
            err("[http_service]\nforce_https = true\n"),
            "hangar.toml line 1: http_service.internal_port: is required: the port the app listens on"
        );
        assert_eq!(
            err("\n[[services]]\ninternal_port = 70000\n"),
            "hangar.toml line 3: services[0].internal_port: must be 1 to 65535, not 70000"
        );
        assert_eq!(
            err("[[services]]\ninternal_port = \"8080\"\n"),
            "hangar.toml line 2: services[0].internal_port: expected an integer, found a string"
        );
        assert_eq!(
            err(
                "[[services]]\ninternal_port = 8080\n[services.concurrency]\nsoft_limit = 30\nhard_limit = 25\n"
            ),
            "hangar.toml line 4: services[0].concurrency.soft_limit: 30 is above hard_limit 25"
        );
        assert_eq!(
            err("[[services]]\ninternal_port = 8080\n[services.concurrency]\nhard_limit = 0\n"),
            "hangar.toml line 4: services[0].concurrency.hard_limit: must be 1 to 4294967295, not 0"
        );
        assert_eq!(
            err("[[services]]\ninternal_port = 8080\nauto_stop_machines = \"sleep\"\n"),
            r#"hangar.toml line 3: services[0].auto_stop_machines: must be "off", "stop", "suspend", true or false"#
        );
        assert_eq!(
            err(
                "[http_service]\ninternal_port = 8080\n[[http_service.checks]]\nmethod = \"GE T\"\n"
            ),
            r#"hangar.toml line 4: http_service.checks[0].method: "GE T" is not an HTTP method (e.g. "GET", "HEAD")"#
        );
        assert_eq!(
            err(
                "[http_service]\ninternal_port = 8080\n[[http_service.checks]]\npath = \"health\"\n"
            ),
            r#"hangar.toml line 4: http_service.checks[0].path: "health" must start with '/' and have no spaces"#
        );
        assert_eq!(
            err("[checks.db]\npath = \"/db\"\n"),
            r#"hangar.toml line 2: checks.db.path: only HTTP checks have a path; add type = "http""#
        );
        assert_eq!(
            err("[checks.db]\ntype = \"grpc\"\n"),
            r#"hangar.toml line 2: checks.db.type: must be "http" or "tcp", not "grpc""#
        );
        assert_eq!(
            err("[[vm]]\ncpus = 0\n"),
            "hangar.toml line 2: vm[0].cpus: must be 1 to 64, not 0"
        );
        assert_eq!(
            err("[vm]\nmemory = \"32mb\"\n"),
            "hangar.toml line 2: vm.memory: must be 64 MB to 1024 GB, not 32 MB"
        );
        assert_eq!(
            err("[vm]\nmemory = \"lots\"\n"),
            r#"hangar.toml line 2: vm.memory: "lots" is not a size (e.g. "512mb", "1gb")"#
        );
        assert_eq!(
            err("[vm]\nsize = \"huge\"\n"),
            "hangar.toml line 2: vm.size: unknown size \"huge\"; use one of shared-cpu-1x, shared-cpu-2x, shared-cpu-4x, shared-cpu-8x, performance-1x, performance-2x, performance-4x, performance-8x, performance-16x"
        );
        assert_eq!(
            err("[[vm]]\ncpus = 1\n\n[[vm]]\ncpus = 2\n"),
            "hangar.toml line 4: vm[1]: only one [[vm]] is supported: every machine of the app has the same size"
        );
        assert_eq!(
            err("[scale]\ncount = 0\n"),
            "hangar.toml line 2: scale.count: must be 1 to 100, not 0"
        );
        assert_eq!(
            err("[deploy]\nwait_timeout = 0\n"),
            "hangar.toml line 2: deploy.wait_timeout: must be longer than 0s"
        );
        assert_eq!(
            err("deploy = 3\n"),
            "hangar.toml line 1: deploy: expected a table, found an integer"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = AppConfig::parse("app = \"x\"\n[deploy\nstrategy = 1\n").unwrap_err();
        assert_eq!(e.line(), 2);
        assert_eq!(e.key(), None);
        assert!(
            e.to_string().starts_with("hangar.toml line 2, column "),
            "{e}"
        );
        let e = AppConfig::parse("[scale]\ncount = 1\ncount = 2\n").unwrap_err();
        assert_eq!(e.line(), 3, "{e}");
    }

    #[test]
    fn durations() {
        let dur = |v: &str| {
            let c = AppConfig::parse(&format!("[deploy]\nwait_timeout = {v}\n"))?;
            Ok::<_, ConfigError>(c.deploy.wait_timeout)
        };
        assert_eq!(dur("\"500ms\"").unwrap(), Duration::from_millis(500));
        assert_eq!(dur("\"10s\"").unwrap(), Duration::from_secs(10));
        assert_eq!(dur("\"5m\"").unwrap(), Duration::from_secs(300));
        assert_eq!(dur("\"1h\"").unwrap(), Duration::from_secs(3600));
        assert_eq!(dur("\"1m30s\"").unwrap(), Duration::from_secs(90));
        assert_eq!(dur("30").unwrap(), Duration::from_secs(30));
        assert_eq!(
            dur("-5").unwrap_err().to_string(),
            r#"hangar.toml line 2: deploy.wait_timeout: -5 is not a duration (e.g. "10s", "500ms", "5m")"#
        );
        assert_eq!(
            dur("1.5").unwrap_err().to_string(),
            r#"hangar.toml line 2: deploy.wait_timeout: expected a duration such as "10s", found a float"#
        );
        assert!(dur("\"5y\"").is_err());
        // Hostile values are errors naming the key, never a panic.
        for v in ["\"1e20\"", "\"inf\"", "\"NaN\""] {
            let e = dur(v).unwrap_err().to_string();
            assert!(e.contains("deploy.wait_timeout"), "{v}: {e}");
        }
        assert_eq!(
            dur("\"87600h\"").unwrap_err().to_string(),
            "hangar.toml line 2: deploy.wait_timeout: must be 0s to 24h, not 87600h"
        );
        assert!(dur("9223372036854775807").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_memory_mb("512mb"), Some(512));
        assert_eq!(parse_memory_mb("1gb"), Some(1024));
        assert_eq!(parse_memory_mb("1.5GB"), Some(1536));
        assert_eq!(parse_memory_mb("2048"), Some(2048));
        assert_eq!(parse_memory_mb("256 MiB"), Some(256));
        assert_eq!(parse_memory_mb("1tb"), None);
        assert_eq!(parse_memory_mb("mb"), None);
        let guest = |vm: &str| {
            AppConfig::parse(&format!("[[vm]]\n{vm}\n"))
                .unwrap()
                .guest
                .unwrap()
        };
        assert_eq!(guest("memory = 2048").memory_mb, 2048);
        assert_eq!(guest("memory_mb = 512").memory_mb, 512);
        assert_eq!(guest("memory = \"2048\"").memory_mb, 2048);
        // A preset, with an explicit key overriding it.
        let g = guest("size = \"performance-2x\"\ncpus = 3");
        assert_eq!(
            (g.cpu_kind.as_str(), g.cpus, g.memory_mb),
            ("performance", 3, 4096)
        );
        assert_eq!(
            err("[[vm]]\nmemory = \"1gb\"\nmemory_mb = 1024\n"),
            "hangar.toml line 3: vm[0].memory_mb: set memory or memory_mb, not both"
        );
    }

    #[test]
    fn max_unavailable() {
        let mu = |v: &str| {
            AppConfig::parse(&format!("[deploy]\nmax_unavailable = {v}\n"))
                .map(|c| c.deploy.max_unavailable)
        };
        assert_eq!(mu("0.5").unwrap(), MaxUnavailable::Fraction(0.5));
        assert_eq!(mu("1.0").unwrap(), MaxUnavailable::Fraction(1.0));
        assert_eq!(mu("2").unwrap(), MaxUnavailable::Count(2));
        assert_eq!(
            mu("0").unwrap_err().to_string(),
            "hangar.toml line 2: deploy.max_unavailable: must be a fraction of the machines in (0, 1] or a count of at least 1, not 0"
        );
        assert_eq!(
            mu("1.5").unwrap_err().to_string(),
            "hangar.toml line 2: deploy.max_unavailable: must be a fraction of the machines in (0, 1] or a count of at least 1, not 1.5"
        );
        assert!(mu("-1").is_err());
        assert!(mu("\"33%\"").is_err());

        assert_eq!(MaxUnavailable::Fraction(0.33).of(2), 1);
        assert_eq!(MaxUnavailable::Fraction(0.33).of(10), 4);
        assert_eq!(MaxUnavailable::Fraction(0.5).of(4), 2);
        assert_eq!(MaxUnavailable::Fraction(1.0).of(3), 3);
        assert_eq!(MaxUnavailable::Count(5).of(3), 3);
        assert_eq!(MaxUnavailable::Count(2).of(0), 0);

        // Strategies other than rolling ignore it, and say so.
        let c = AppConfig::parse("[deploy]\nstrategy = \"canary\"\nmax_unavailable = 2\n").unwrap();
        assert_eq!(
            c.warnings,
            [
                "hangar.toml line 3: deploy.max_unavailable applies to the rolling strategy only and is ignored by canary"
            ]
        );
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n[deploy]")
            .expect("the README's hangar.toml example");
        let body = &readme[start + "```toml\n".len()..];
        let text = &body[..body.find("```").expect("end of the example")];
        let c = AppConfig::parse(text).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.count, 2);
        assert_eq!(c.deploy.max_unavailable, MaxUnavailable::Count(1));
        assert_eq!(c.services[0].checks.len(), 1);
        assert_eq!(c.checks[0].name, "db");
        assert_eq!(c.guest.as_ref().map(|g| g.memory_mb), Some(512));
    }
}
