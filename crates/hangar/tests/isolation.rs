//! Machines do not trust each other: each has its own network namespace
//! and address, and the kernel's firewall (Hangar's nftables table) lets
//! it reach neither another machine, nor the host (any of its addresses:
//! Postgres, Redis, NATS, SSH, Hangar's API, proxy and admin ports), nor
//! link-local addresses. Tried from inside a machine, as a tenant would.

mod support;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use serde_json::{Value, json};
use support::{TestPlatform, example, wait_for};

/// A platform with examples/toolbox deployed (so `toolbox:v1` exists),
/// its API, proxy and admin port listening on every host address.
fn platform() -> TestPlatform {
    support::require_runc_and_root();
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--api-listen",
        "0.0.0.0:0",
        "--proxy-listen",
        "0.0.0.0:0",
        "--admin-listen",
        "0.0.0.0:0",
    ]);
    p.deploy(&example("toolbox"));
    p
}

fn create_app(p: &TestPlatform, name: &str) {
    let (code, body) = p.call("POST", "/v1/apps", json!({"app_name": name}));
    assert_eq!(code, 201, "{body}");
}

/// A Machines API machine serving `reply` on port 8080 (the same port for
/// every app: a port is no longer a host-wide name).
fn serving(p: &TestPlatform, app: &str, reply: &str, autostop: &str) -> Value {
    let (code, m) = p.call(
        "POST",
        &format!("/v1/apps/{app}/machines"),
        json!({"config": {
            "image": "toolbox:v1",
            "env": {"TOOLBOX_REPLY": reply},
            "guest": {"memory_mb": 64},
            "services": [{"internal_port": 8080, "autostop": autostop,
                          "autostart": true, "idle_timeout": "1h"}],
        }}),
    );
    assert_eq!(code, 200, "{m}");
    m
}

/// Runs `toolbox connect TARGETS` inside a machine; the outcome per target.
fn connects_from(p: &TestPlatform, app: &str, id: &str, targets: &[String]) -> Vec<(String, bool)> {
    let mut command = vec!["/app/toolbox".to_owned(), "connect".to_owned()];
    command.extend(targets.iter().cloned());
    let (code, out) = p.call(
        "POST",
        &format!("/v1/apps/{app}/machines/{id}/exec"),
        json!({"command": command, "timeout": 120}),
    );
    assert_eq!(code, 200, "{out}");
    let stdout = out["stdout"].as_str().unwrap_or_default();
    let lines: Vec<(String, bool)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CONNECT "))
        .map(|l| {
            let (target, outcome) = l.split_once(' ').unwrap_or((l, ""));
            (target.to_owned(), outcome == "ok")
        })
        .collect();
    assert_eq!(
        lines.len(),
        targets.len(),
        "every attempt reports: {stdout}"
    );
    lines
}

/// Every IPv4 address of the host, on every interface (loopback too).
fn host_addresses() -> Vec<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let after = l.split(" inet ").nth(1)?;
            after.split('/').next()?.parse().ok()
        })
        .collect()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| {
            p.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no port in {url}"))
}

fn address(m: &Value) -> Ipv4Addr {
    m["private_ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no private_ip: {m}"))
}

#[test]
fn a_machine_reaches_neither_other_machines_nor_the_host() {
    let p = platform();
    create_app(&p, "other");
    let a = serving(&p, "toolbox", "a", "off");
    let b = serving(&p, "other", "b", "off");
    let (a_id, a_ip, b_ip) = (
        a["id"].as_str().unwrap().to_owned(),
        address(&a),
        address(&b),
    );
    assert_ne!(a_ip, b_ip);
    for ip in [a_ip, b_ip] {
        assert!(
            !ip.is_loopback(),
            "a machine of its own has its own address: {ip}"
        );
    }
    // Both listen on 8080 and both answer through the proxy (a machine the
    // Machines API started may take a moment to listen: it has no check).
    wait_for(30, "toolbox to answer", || {
        (p.get("toolbox", "/").0 == 200).then_some(())
    });
    let other = wait_for(30, "other to answer", || {
        let got = p.get("other", "/");
        (got.0 == 200).then_some(got)
    });
    assert_eq!(other, (200, "b\n".to_owned()));

    let api_port = port_of(&p.api);
    let admin_port = port_of(p.metrics_url.trim_end_matches("/metrics"));
    // A service of the host's own on every address (like sshd would be).
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let service_port = host_service.local_addr().unwrap().port();
    let _accepting = std::thread::spawn(move || for _ in host_service.incoming() {});
    let mut targets = vec![
        format!("{b_ip}:8080"),
        "169.254.169.254:80".to_owned(),
        // Its own gateway: the host's end of its link.
        format!("{}:22", Ipv4Addr::from(u32::from(a_ip) - 1)),
    ];
    let mut hosts = host_addresses();
    hosts.push(Ipv4Addr::from(u32::from(a_ip) - 1));
    for host in hosts {
        if host.is_loopback() {
            continue; // inside the machine, 127.0.0.1 is its own loopback
        }
        let ports = [
            5432,
            6379,
            4222,
            22,
            api_port,
            admin_port,
            p.proxy_port,
            service_port,
        ];
        for port in ports {
            targets.push(format!("{host}:{port}"));
        }
        // From the host itself, Hangar's ports and the service answer on
        // this address: a failure from inside is the firewall, not an
        // empty port.
        for port in [api_port, admin_port, p.proxy_port, service_port] {
            assert!(
                std::net::TcpStream::connect((host, port)).is_ok(),
                "{host}:{port} answers on the host"
            );
        }
    }

    let outcomes = connects_from(&p, "toolbox", &a_id, &targets);
    eprintln!("from machine A: {outcomes:?}");
    let reached: Vec<&String> = outcomes
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| t)
        .collect();
    assert!(reached.is_empty(), "machine A reached {reached:?}");

    // Its own loopback is its own: what it binds there, only it sees.
    let own = connects_from(&p, "toolbox", &a_id, &["127.0.0.1:8080".to_owned()]);
    assert!(own[0].1, "a machine reaches its own port on its loopback");
}

#[test]
fn a_squatter_on_the_same_port_never_gets_another_apps_traffic() {
    let p = platform();
    create_app(&p, "victim");
    create_app(&p, "squatter");
    let a = serving(&p, "victim", "victim", "stop");
    let a_id = a["id"].as_str().unwrap().to_owned();
    // B listens on the very port A uses, all along.
    serving(&p, "squatter", "squatter", "off");
    let check = |phase: &str| {
        for _ in 0..20 {
            let (code, body) = p.get("victim", "/");
            assert_eq!((code, body.as_str()), (200, "victim\n"), "{phase}");
        }
    };
    check("while A runs");
    for round in 0..3 {
        // Stop A: the next request wakes it, and only A may answer it.
        let (code, body) = p.call(
            "POST",
            &format!("/v1/apps/victim/machines/{a_id}/stop"),
            Value::Null,
        );
        assert_eq!(code, 200, "{body}");
        wait_for(30, "A stopped", || {
            let (_, m) = p.call(
                "GET",
                &format!("/v1/apps/victim/machines/{a_id}"),
                Value::Null,
            );
            (m["state"] == "stopped").then_some(())
        });
        check(&format!("after stop and wake {round}"));
    }
    // A restart (stop + start by the API) keeps the address: still A.
    let (code, body) = p.call(
        "POST",
        &format!("/v1/apps/victim/machines/{a_id}/restart"),
        Value::Null,
    );
    assert_eq!(code, 200, "{body}");
    check("after a restart");
    let (_, m) = p.call(
        "GET",
        &format!("/v1/apps/victim/machines/{a_id}"),
        Value::Null,
    );
    assert_eq!(
        address(&m),
        address(&a),
        "a machine keeps its address for life"
    );
}

#[test]
fn org_quotas_refuse_machines_and_apps_past_their_limits() {
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--org-max-memory-mb",
        "1024",
        "--org-max-apps",
        "2",
    ]);
    // The deploy's machine takes 512 MiB (--memory-mb's default).
    p.deploy(&example("toolbox"));
    let machine = |mb: u64| {
        p.call(
            "POST",
            "/v1/apps/toolbox/machines",
            json!({"config": {"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
                              "guest": {"memory_mb": mb}}}),
        )
    };
    assert_eq!(machine(256).0, 200);
    assert_eq!(machine(256).0, 200);
    let (code, body) = machine(64);
    assert_eq!(code, 422, "{body}");
    let msg = body["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("at most 1024 MiB") && msg.contains("--org-max-memory-mb"),
        "the limit is named: {msg}"
    );
    // Apps: toolbox is one, a second fits, a third does not.
    assert_eq!(
        p.call("POST", "/v1/apps", json!({"app_name": "two"})).0,
        201
    );
    let (code, body) = p.call("POST", "/v1/apps", json!({"app_name": "three"}));
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("at most 2 apps"), "{body}");
    // Every machine lives under the parent cgroup, limited below the host.
    let parent = std::fs::read_to_string("/sys/fs/cgroup/memory/hangar/memory.limit_in_bytes")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/hangar/memory.max"))
        .expect("the hangar parent cgroup has a memory limit");
    let host_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let limit: u64 = parent.trim().parse().expect("a number");
    assert!(
        limit < host_kb * 1024,
        "parent limit {limit} below the host's memory"
    );
}

/// Runs toolbox inside a machine: its stdout.
fn exec(p: &TestPlatform, app: &str, id: &str, args: &[&str]) -> String {
    let mut command = vec!["/app/toolbox"];
    command.extend_from_slice(args);
    let (code, out) = p.call(
        "POST",
        &format!("/v1/apps/{app}/machines/{id}/exec"),
        json!({"command": command, "timeout": 60}),
    );
    assert_eq!(code, 200, "{out}");
    out["stdout"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn resources_answer_a_machine_only_as_its_own_app() {
    // The host's servers as this machine runs them: Postgres trusts every
    // local connection (superuser included), Redis's default user has no
    // password, NATS has no auth. What a machine may do there is Hangar's
    // to enforce.
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--postgres-url",
        "postgres://postgres@127.0.0.1:5432/postgres",
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--nats-url",
        "nats://127.0.0.1:4222",
    ]);
    p.deploy(&example("toolbox"));
    let out = p.deploy(&example("todo"));
    assert!(out.contains("is live"), "{out}");
    assert_eq!(
        p.get("todo", "/stats").0,
        200,
        "todo works through the gates"
    );
    // A machine of app todo (toolbox's image, todo's resources).
    let (code, m) = p.call(
        "POST",
        "/v1/apps/todo/machines",
        json!({"config": {"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
                          "guest": {"memory_mb": 64}}}),
    );
    assert_eq!(code, 200, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let file = exec(&p, "todo", &id, &["cat", "/run/hangar/resources.json"]);
    let res: Value = serde_json::from_str(&file).expect("the resources file is JSON");
    let environ = exec(&p, "todo", &id, &["cat", "/proc/1/environ"]);
    for seen in [&file, &environ] {
        for admin in [
            "postgres://postgres",
            "127.0.0.1:5432",
            "127.0.0.1:6379",
            "127.0.0.1:4222",
        ] {
            assert!(
                !seen.contains(admin),
                "the operator's {admin} reached the machine"
            );
        }
    }
    let pg = &res["postgres"];
    let pg_addr = format!("{}:{}", pg["host"].as_str().unwrap(), pg["port"]);
    let (user, db) = (
        pg["user"].as_str().unwrap(),
        pg["database"].as_str().unwrap(),
    );
    let startup = |u: &str, d: &str| exec(&p, "todo", &id, &["pg", &pg_addr, u, d]);
    for (u, d) in [
        ("postgres", "postgres"),
        ("postgres", db),
        (user, "postgres"),
        (user, "template1"),
        ("hangar_toolbox", "hangar_toolbox"),
    ] {
        let answer = startup(u, d);
        assert!(
            answer.starts_with("PG E") && answer.contains("may connect only as"),
            "{u} to {d}: {answer}"
        );
    }
    let own = startup(user, db);
    assert!(
        own.starts_with("PG R"),
        "its own role reaches its own database: {own}"
    );

    let redis = res["redis"]["url"].as_str().unwrap();
    let redis_addr = redis
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let (ruser, rpass) = (
        res["redis"]["user"].as_str().unwrap(),
        res["redis"]["password"].as_str().unwrap(),
    );
    let send = |lines: &[&str]| {
        let mut args = vec!["send", redis_addr.as_str()];
        args.extend_from_slice(lines);
        exec(&p, "todo", &id, &args)
    };
    let before = send(&[
        "KEYS *\\r\\n",
        "AUTH default x\\r\\n",
        "AUTH hangar_toolbox x\\r\\n",
    ]);
    assert!(
        !before.contains("+OK") && before.contains("NOAUTH"),
        "{before}"
    );
    let auth = format!("AUTH {ruser} {rpass}\\r\\n");
    // The app's own prefix, as its credentials say (made from its id).
    let own_set = format!(
        "SET {}iso 1\\r\\n",
        res["redis"]["prefix"].as_str().unwrap()
    );
    let after = send(&[&auth, &own_set, "KEYS *\\r\\n", "GET other:x\\r\\n"]);
    assert!(
        after.starts_with("REPLY +OK\\r\\n+OK\\r\\n"),
        "own user, own keys: {after}"
    );
    assert!(
        !after.contains("$-1") && after.matches("-").count() >= 2,
        "KEYS and another prefix refused: {after}"
    );

    let nats = res["pubsub"]["url"].as_str().unwrap();
    let own_sub = format!(
        "SUB {}> 3\\r\\nPING\\r\\n",
        res["pubsub"]["prefix"].as_str().unwrap()
    );
    let nats_addr = nats.trim_start_matches("nats://").to_owned();
    let subs = exec(
        &p,
        "todo",
        &id,
        &[
            "send",
            &nats_addr,
            "CONNECT {}\\r\\n",
            "SUB > 1\\r\\n",
            "SUB hangar.other.> 2\\r\\n",
            "PUB hangar.other.x 2\\r\\nhi\\r\\n",
            &own_sub,
        ],
    );
    assert_eq!(subs.matches("Permissions Violation").count(), 3, "{subs}");
    assert!(
        subs.trim_end().ends_with("+OK\\r\\nPONG\\r\\n"),
        "its own subjects are fine: {subs}"
    );
}

#[test]
fn root_in_a_machine_is_not_root_on_the_host() {
    let p = platform();
    // An image user of 0 (Fly's processes[].user): root inside.
    let (code, m) = p.call(
        "POST",
        "/v1/apps/toolbox/machines",
        json!({"config": {"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
                          "processes": [{"user": "root"}], "guest": {"memory_mb": 64}}}),
    );
    assert_eq!(code, 200, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let out = exec(&p, "toolbox", &id, &["whoami"]);
    assert!(out.contains("UID 0\n"), "uid 0 inside: {out}");
    for line in out.lines().filter(|l| !l.starts_with("UID")) {
        assert!(
            line.contains("failed"),
            "a root-only act succeeded: {line}\n{out}"
        );
    }
    assert_eq!(out.lines().count(), 7, "every attempt reports: {out}");
    // The kernel's 32-bit entry is not for machines: seccomp kills the
    // process at its first compat system call.
    let out = exec(&p, "toolbox", &id, &["compat"]);
    assert!(
        !out.contains("COMPAT ok"),
        "a 32-bit system call ran: {out}"
    );
    // On the host, that process is an unprivileged uid of the org's range.
    let state = std::process::Command::new("runc")
        .arg("--root")
        .arg(p.data_dir().join("runc"))
        .args(["state", &id])
        .output()
        .expect("runc state");
    let state: Value = serde_json::from_slice(&state.stdout).expect("runc state is JSON");
    let pid = state["pid"].as_i64().expect("a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(uid >= 1_000_000, "uid 0 inside is host uid {uid}");
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &uid.to_string(), "65536"],
        "its user namespace maps 65536 uids from the org's base"
    );
    // That uid (or any other host user) cannot pass through the data dir,
    // though the machine runs from an image unpacked inside it: machines
    // see the images through a mount in the run dir.
    let data = p.data_dir();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the data dir is private");
    let token = data.join("admin-token");
    assert!(token.is_file());
    let read = std::process::Command::new("cat")
        .arg(&token)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("cat as the machine's uid");
    assert!(
        !read.status.success()
            && String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "the machine's host uid read {}: {read:?}",
        token.display()
    );
}
