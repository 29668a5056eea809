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
    let tcp = machine::Check::from(&c.services[0].checks[1]);
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
        err("[http_service]\ninternal_port = 8080\n[[http_service.checks]]\nmethod = \"GE T\"\n"),
        r#"hangar.toml line 4: http_service.checks[0].method: "GE T" is not an HTTP method (e.g. "GET", "HEAD")"#
    );
    assert_eq!(
        err("[http_service]\ninternal_port = 8080\n[[http_service.checks]]\npath = \"health\"\n"),
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
    let readme = include_str!("../../../../README.md");
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
