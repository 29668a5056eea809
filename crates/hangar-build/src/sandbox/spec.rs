//! The OCI runtime spec of a build container and its root filesystem
//! (see the parent module for what a build container sees).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Step, paths};

/// What of the host's root the containers see: top-level symlinks to
/// recreate (`bin -> usr/bin`) and read-only binds (host path, inside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct System {
    /// `(name, link target)` of symlinks at the root.
    pub links: Vec<(String, PathBuf)>,
    /// Directories and files bound read-only, same path inside.
    pub binds: Vec<PathBuf>,
}

/// Root entries bound from the host (symlinks recreated as symlinks).
const ROOT_DIRS: [&str; 5] = ["usr", "bin", "lib", "lib64", "sbin"];
/// `/etc` entries the compiler, the linker and the loader need, bound
/// read-only when the host has them.
const ETC: [&str; 6] = [
    "etc/alternatives",
    "etc/ld.so.cache",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d",
    "etc/nsswitch.conf",
    "etc/ssl",
];
/// Files Hangar writes itself (no host details): `etc/passwd`,
/// `etc/group`, `etc/hosts`.
const GENERATED: [&str; 3] = ["etc/passwd", "etc/group", "etc/hosts"];

impl System {
    /// What this host has of [`ROOT_DIRS`] and [`ETC`].
    pub fn detect() -> System {
        let mut sys = System::default();
        for name in ROOT_DIRS {
            let host = Path::new("/").join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&host) {
                        sys.links.push((name.to_owned(), target));
                    }
                }
                Ok(m) if m.is_dir() => sys.binds.push(host),
                _ => {}
            }
        }
        for name in ETC {
            let host = Path::new("/").join(name);
            if host.exists() {
                sys.binds.push(host);
            }
        }
        sys
    }
}

/// The OCI runtime spec (`config.json`) of a build container whose root
/// filesystem is `rootfs` and whose generated `/etc` files are in
/// `etc_dir`. Pure: [`prepare_rootfs`] makes the mount points it needs.
pub fn spec(rootfs: &Path, etc_dir: &Path, sys: &System, step: &Step) -> Value {
    let ro = json!(["bind", "ro", "nosuid", "nodev"]);
    let rw = json!(["bind", "nosuid", "nodev"]);
    let tmp_mb = (step.limits.memory_mb / 4).max(64);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", format!("size={tmp_mb}m")]}),
    ];
    for host in &sys.binds {
        mounts.push(json!({"destination": host, "type": "bind", "source": host, "options": ro}));
    }
    for name in GENERATED {
        mounts.push(
            json!({"destination": Path::new("/").join(name), "type": "bind",
            "source": etc_dir.join(Path::new(name).strip_prefix("etc").unwrap_or(Path::new(name))),
            "options": ro}),
        );
    }
    if step.network && Path::new("/etc/resolv.conf").exists() {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
            "source": "/etc/resolv.conf", "options": ro}));
    }
    // CARGO_HOME: writable (cargo's locks and cache tracking live there)
    // but small; the caches themselves are bound into it.
    mounts.push(
        json!({"destination": paths::CARGO_HOME, "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=755", "size=65536k",
                    format!("uid={}", step.user.0), format!("gid={}", step.user.1)]}),
    );
    for b in &step.binds {
        mounts.push(
            json!({"destination": b.destination, "type": "bind", "source": b.source,
            "options": if b.writable { &rw } else { &ro }}),
        );
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
    ];
    if !step.network {
        // A new network namespace without a path: only its own loopback.
        namespaces.push(json!({"type": "network"}));
    }
    let mut resources = json!({
        "memory": {"limit": step.limits.memory_mb * 1024 * 1024,
                   "swap": step.limits.memory_mb * 1024 * 1024},
        "pids": {"limit": step.limits.pids},
        // Only runc's default devices (null, zero, full, random, urandom, tty).
        "devices": [{"allow": false, "access": "rwm"}]
    });
    if let Some(cpus) = step.limits.cpus {
        let period: u64 = 100_000;
        let quota = (cpus * period as f64).round().max(1000.0) as i64;
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    let nofile = nofile_limit();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": step.user.0, "gid": step.user.1, "additionalGids": []},
            "args": step.args,
            "env": step.env,
            "cwd": step.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [],
                             "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "build",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": format!("/hangar-builds/{}", step.id),
            "resources": resources,
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// As many open files as hangar itself may have (a container cannot get
/// more than its creator's hard limit), capped at 65536.
fn nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only to `rl`, a valid local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_max.min(65536)
    } else {
        1024
    }
}

/// Creates (idempotently) the sandbox's root filesystem under `dir`: an
/// empty directory tree of mount points and the host's top-level symlinks,
/// root-owned and not writable by the build user, plus the generated
/// `/etc` files. Returns (rootfs, generated etc dir).
pub fn prepare_rootfs(
    dir: &Path,
    sys: &System,
    user: (u32, u32),
) -> std::io::Result<(PathBuf, PathBuf)> {
    let rootfs = dir.join("rootfs");
    let etc = dir.join("etc");
    for d in [dir, &rootfs, &etc] {
        std::fs::create_dir_all(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut mount_dirs: Vec<PathBuf> = ["proc", "dev", "tmp", "etc", "src", "target", "cargo"]
        .iter()
        .map(PathBuf::from)
        .chain(
            [paths::TOOLCHAIN, paths::RUNTIME]
                .iter()
                .map(|p| PathBuf::from(p.trim_start_matches('/'))),
        )
        .collect();
    let mut mount_files: Vec<PathBuf> = GENERATED.iter().map(PathBuf::from).collect();
    mount_files.push(PathBuf::from("etc/resolv.conf"));
    for host in &sys.binds {
        let rel = host.strip_prefix("/").unwrap_or(host).to_owned();
        if host.is_dir() {
            mount_dirs.push(rel);
        } else {
            mount_files.push(rel);
        }
    }
    for (name, target) in &sys.links {
        let at = rootfs.join(name);
        if std::fs::read_link(&at).ok().as_ref() != Some(target) {
            remove_any(&at)?;
            std::os::unix::fs::symlink(target, &at)?;
        }
    }
    for d in mount_dirs {
        let at = rootfs.join(d);
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
            remove_any(&at)?;
            std::fs::create_dir_all(&at)?;
        }
    }
    // runc gives a tmpfs the mode of the directory it is mounted on.
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for f in mount_files {
        let at = rootfs.join(f);
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_file()) {
            remove_any(&at)?;
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&at, "")?;
        }
    }
    let (uid, gid) = user;
    for (name, body) in [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nbuild:x:{uid}:{gid}:hangar build:/tmp:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nbuild:x:{gid}:\n")),
        (
            "hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n".to_owned(),
        ),
    ] {
        let at = etc.join(name);
        if std::fs::read_to_string(&at).ok().as_deref() != Some(&body) {
            std::fs::write(&at, body)?;
        }
    }
    Ok((rootfs, etc))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{BUILD_UID, Bind, BuildLimits};

    fn step(network: bool) -> Step {
        Step {
            id: "build-bld_1".into(),
            args: vec!["cargo".into(), "build".into()],
            cwd: "/src".into(),
            env: vec!["PATH=/toolchain/bin:/usr/bin:/bin".into()],
            network,
            user: (BUILD_UID, BUILD_UID),
            binds: vec![
                Bind::ro("/data/builds/app/src", paths::SRC),
                Bind::rw("/targets/app", paths::TARGET),
            ],
            limits: BuildLimits {
                memory_mb: 2048,
                pids: 1000,
                cpus: Some(1.5),
            },
        }
    }

    fn sys() -> System {
        System {
            links: vec![("bin".into(), "usr/bin".into())],
            binds: vec!["/usr".into(), "/etc/ssl".into()],
        }
    }

    fn mount<'a>(spec: &'a Value, dest: &str) -> Option<&'a Value> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
    }

    fn options(m: &Value) -> Vec<&str> {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_build_container_is_unprivileged_offline_and_limited() {
        let s = spec(
            Path::new("/sb/rootfs"),
            Path::new("/sb/etc"),
            &sys(),
            &step(false),
        );
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["root"]["path"], "/sb/rootfs");
        assert_eq!(s["process"]["user"]["uid"], BUILD_UID);
        assert_eq!(s["process"]["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "ambient",
            "inheritable",
        ] {
            assert_eq!(s["process"]["capabilities"][set], json!([]), "{set}");
        }
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts", "network"]);
        assert!(
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.get("path").is_none()),
            "new namespaces, none joined"
        );
        assert_eq!(s["linux"]["cgroupsPath"], "/hangar-builds/build-bld_1");
        let r = &s["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 2048u64 * 1024 * 1024);
        assert_eq!(r["pids"]["limit"], 1000);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert!(mount(&s, "/etc/resolv.conf").is_none(), "no DNS offline");
        assert!(s["process"]["rlimits"][0]["hard"].as_u64().unwrap() > 0);
    }

    #[test]
    fn the_source_is_read_only_and_only_the_target_is_writable() {
        let s = spec(
            Path::new("/sb/rootfs"),
            Path::new("/sb/etc"),
            &sys(),
            &step(false),
        );
        let src = mount(&s, "/src").unwrap();
        assert_eq!(src["source"], "/data/builds/app/src");
        assert!(options(src).contains(&"ro"));
        let target = mount(&s, "/target").unwrap();
        assert!(!options(target).contains(&"ro"));
        for dest in ["/usr", "/etc/ssl", "/etc/passwd"] {
            assert!(options(mount(&s, dest).unwrap()).contains(&"ro"), "{dest}");
        }
        assert_eq!(
            mount(&s, "/etc/passwd").unwrap()["source"],
            "/sb/etc/passwd"
        );
        let tmp = mount(&s, "/tmp").unwrap();
        assert_eq!(tmp["type"], "tmpfs");
        assert!(options(tmp).contains(&"size=512m"));
        let home = mount(&s, "/cargo").unwrap();
        assert_eq!(home["type"], "tmpfs");
        assert!(options(home).contains(&"uid=64055"));
        // Binds are writable only where asked: the source, the target.
        let writable: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind" && !options(m).contains(&"ro"))
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(writable, ["/target"]);
        // Nothing of the host beyond the system dirs and the step's binds.
        let sources: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind")
            .map(|m| m["source"].as_str().unwrap())
            .collect();
        for src in sources {
            assert!(
                src == "/usr"
                    || src == "/etc/ssl"
                    || src.starts_with("/sb/etc/")
                    || src.starts_with("/data/builds/app/")
                    || src == "/targets/app",
                "unexpected bind of {src}"
            );
        }
    }

    #[test]
    fn the_fetch_step_shares_the_network_and_nothing_more() {
        let mut st = step(true);
        st.limits.cpus = None;
        let s = spec(Path::new("/sb/rootfs"), Path::new("/sb/etc"), &sys(), &st);
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts"]);
        assert!(s["linux"]["resources"].get("cpu").is_none(), "all CPUs");
        if Path::new("/etc/resolv.conf").exists() {
            assert!(mount(&s, "/etc/resolv.conf").is_some());
        }
    }

    #[test]
    fn the_rootfs_holds_mount_points_and_the_hosts_links() {
        let dir = tempfile::tempdir().unwrap();
        let sys = System::detect();
        assert!(sys.binds.iter().any(|b| b == Path::new("/usr")), "{sys:?}");
        let (_, etc) = prepare_rootfs(dir.path(), &sys, (BUILD_UID, BUILD_UID)).unwrap();
        // Twice: idempotent.
        let (rootfs, _) = prepare_rootfs(dir.path(), &sys, (BUILD_UID, BUILD_UID)).unwrap();
        for (name, target) in &sys.links {
            assert_eq!(&std::fs::read_link(rootfs.join(name)).unwrap(), target);
        }
        for d in [
            "proc",
            "dev",
            "tmp",
            "src",
            "target",
            "cargo",
            "toolchain",
            "runtime",
            "usr",
        ] {
            assert!(rootfs.join(d).is_dir(), "{d}");
        }
        assert!(rootfs.join("etc/passwd").is_file());
        let tmp = std::fs::metadata(rootfs.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
        assert!(passwd.contains(":64055:64055:"), "{passwd}");
        assert_eq!(std::fs::read_dir(rootfs.join("usr")).unwrap().count(), 0);
    }
}
