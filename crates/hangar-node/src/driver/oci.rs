//! The OCI runtime spec (`config.json`) runc starts a machine from.

use serde_json::json;

use std::path::Path;

use super::{DriverError, MachineSpec, RESOURCES_DIR, RESOURCES_FILE, gpu_passthrough};

/// The OCI runtime spec (config.json) of a machine.
pub(super) fn oci_config(spec: &MachineSpec) -> Result<serde_json::Value, DriverError> {
    if spec.argv.is_empty() {
        return Err(DriverError::NoCommand);
    }
    let mut devices = Vec::new();
    let mut allowed = vec![json!({"allow": false, "access": "rwm"})];
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", "size=262144k"]}),
    ];
    let mut env = spec.env.clone();
    if let Some(dir) = &spec.resources {
        mounts.push(json!({"destination": RESOURCES_DIR, "type": "bind",
            "source": dir, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        env.push(format!("HANGAR_RESOURCES={RESOURCES_DIR}/{RESOURCES_FILE}"));
    }
    if Path::new("/etc/resolv.conf").exists() {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
            "source": "/etc/resolv.conf", "options": ["rbind", "ro"]}));
    }
    if !spec.gpus.is_empty() {
        let (devs, binds) = gpu_passthrough(&spec.gpus);
        for (path, major, minor) in devs {
            devices.push(
                json!({"path": path, "type": "c", "major": major, "minor": minor,
                                "fileMode": 0o666, "uid": 0, "gid": 0}),
            );
            allowed.push(
                json!({"allow": true, "type": "c", "major": major, "minor": minor,
                                "access": "rwm"}),
            );
        }
        for (source, destination) in binds {
            mounts.push(
                json!({"destination": destination, "type": "bind", "source": source,
                               "options": ["bind", "ro", "nosuid"]}),
            );
        }
    }
    // As many open files as hangar itself may have (a container cannot be
    // given more than its creator's hard limit), capped at 65536.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only to `rl`, a valid local.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_max.min(65536)
    } else {
        1024
    };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
    ];
    // A new network namespace, wired before start when the machine has an
    // address, else empty: a runc machine never shares the host's network.
    namespaces.push(json!({"type": "network"}));
    let masked = vec![
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    ];
    if spec.uid_base.is_some() {
        namespaces.push(json!({"type": "user"}));
    }
    let quota_period: u64 = 100_000;
    let quota = (spec.limits.cpus * quota_period as f64).round().max(1000.0) as i64;
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.0, "gid": spec.user.1},
            "args": spec.argv,
            "env": env,
            "cwd": spec.cwd,
            "noNewPrivileges": true,
            // The host's OOM killer picks a machine before hangar (-500).
            "oomScoreAdj": 500,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
        },
        "root": {"path": spec.rootfs, "readonly": true},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": format!("/hangar/{}", spec.id),
            "resources": {
                "memory": {"limit": spec.limits.memory_mb * 1024 * 1024,
                           "swap": spec.limits.memory_mb * 1024 * 1024},
                "pids": {"limit": spec.limits.pids},
                "cpu": {"quota": quota, "period": quota_period},
                "devices": allowed
            },
            "devices": devices,
            // Docker's default policy for a container without
            // capabilities: no unshare, keyrings, bpf, io_uring, mount, ...
            "seccomp": crate::seccomp::host_profile(),
            "maskedPaths": masked,
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(base) = spec.uid_base {
        let map = json!([{"containerID": 0, "hostID": base, "size": 65_536}]);
        config["linux"]["uidMappings"] = map.clone();
        config["linux"]["gidMappings"] = map;
    }
    Ok(config)
}
