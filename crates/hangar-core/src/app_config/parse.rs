//! The hangar.toml reader: key tables, spans for errors, and the parser
//! that turns a TOML document into an [`AppConfig`].

use super::*;

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
pub(super) struct Table<'a, 'i> {
    path: String,
    span: Range<usize>,
    entries: Vec<(&'a str, Range<usize>, &'a Value<'i>)>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn new(path: String, span: Range<usize>, table: &'a DeTable<'i>) -> Self {
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

pub(super) struct Parser<'s> {
    pub(super) src: &'s str,
    pub(super) warnings: Vec<String>,
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

    pub(super) fn parse_root(&mut self, root: &Table) -> Result<AppConfig, ConfigError> {
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
