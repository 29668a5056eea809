//! The build sandbox: each cargo invocation of a build runs in a runc
//! container of its own, so a tenant's build scripts and proc macros never
//! run on the host.
//!
//! What a build container sees ([`spec`]): a root filesystem of its own,
//! read-only (an empty directory under the data dir holding only mount
//! points), the host's `/usr` (and `/bin`, `/lib`, … as the host has them)
//! and a few `/etc` files read-only, the Rust toolchain at `/toolchain`,
//! the cargo home's `registry` and `git` dirs inside a small tmpfs
//! `CARGO_HOME` at `/cargo`, Hangar's runtime crates at `/runtime`, the
//! app's source read-only at `/src`, its target dir read-write at
//! `/target`, a bounded tmpfs `/tmp` (also `HOME`), proc and a minimal
//! `/dev`. Nothing else of the host: not the data dir (`state.db`,
//! `secrets.key`, `admin-token`, other apps), not `/root`, `/var`, `/tmp` or
//! `/run`. It runs as an unprivileged uid of its own ([`BUILD_UID`] by
//! default) with no capabilities and `noNewPrivileges`, in new pid, mount,
//! ipc, uts and (unless the step fetches) network namespaces, in a cgroup
//! with memory, pids and CPU limits.
//!
//! [`run`] runs one container in the foreground (`runc run`, no
//! `--detach`) with a wall-clock limit, then kills and deletes it: every
//! process of the container dies with it (its own pid namespace, so
//! `setsid` daemons too; `runc kill --all` signals the whole cgroup).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

mod spec;
pub use spec::{System, prepare_rootfs, spec};

/// The default host uid (and gid) build containers run as. Not a user of
/// the host (Debian hands out ids 60000-64999 to packages on request; pick
/// another with `hangar up --build-uid` if this one is taken).
pub const BUILD_UID: u32 = 64_055;

/// Where the container sees each host directory.
pub mod paths {
    /// The app's source (read-only).
    pub const SRC: &str = "/src";
    /// The app's cargo target dir (read-write).
    pub const TARGET: &str = "/target";
    /// The Rust toolchain (`rustc --print sysroot`).
    pub const TOOLCHAIN: &str = "/toolchain";
    /// `CARGO_HOME`: a tmpfs with the host's `registry` and `git` inside.
    pub const CARGO_HOME: &str = "/cargo";
    /// Hangar's runtime crates.
    pub const RUNTIME: &str = "/runtime";
}

/// cgroup limits of one build container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildLimits {
    /// Memory (and memory + swap) limit.
    pub memory_mb: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
    /// CPU quota in CPUs; `None`: every CPU of the host.
    pub cpus: Option<f64>,
}

impl BuildLimits {
    /// Default memory limit: 8 GiB, or the host's memory if it has less.
    pub const DEFAULT_MEMORY_MB: u64 = 8 * 1024;
    /// Default pids limit.
    pub const DEFAULT_PIDS: u64 = 4096;
    /// Smallest memory limit accepted (rustc needs some room).
    pub const MIN_MEMORY_MB: u64 = 256;
    /// pids bounds.
    pub const PIDS_RANGE: (u64, u64) = (64, 1 << 22);

    /// The defaults for this host.
    pub fn for_host() -> BuildLimits {
        BuildLimits {
            memory_mb: Self::DEFAULT_MEMORY_MB.min(host_memory_mb().unwrap_or(u64::MAX)),
            pids: Self::DEFAULT_PIDS,
            cpus: None,
        }
    }

    /// Checks the limits against their bounds and this host: memory at
    /// most the host's, CPUs at most the host's.
    pub fn check(&self) -> Result<(), String> {
        let host_mb = host_memory_mb().unwrap_or(u64::MAX);
        if self.memory_mb < Self::MIN_MEMORY_MB || self.memory_mb > host_mb {
            return Err(format!(
                "the build memory limit must be between {} MiB and this host's {host_mb} MiB (got {})",
                Self::MIN_MEMORY_MB,
                self.memory_mb
            ));
        }
        let (lo, hi) = Self::PIDS_RANGE;
        if !(lo..=hi).contains(&self.pids) {
            return Err(format!(
                "the build pids limit must be between {lo} and {hi} (got {})",
                self.pids
            ));
        }
        if let Some(cpus) = self.cpus {
            let host = host_cpus();
            if !(cpus >= 0.01 && cpus <= host as f64) {
                return Err(format!(
                    "the build CPU limit must be between 0.01 and this host's {host} CPUs (got {cpus})"
                ));
            }
        }
        Ok(())
    }

    /// `CARGO_BUILD_JOBS` matching the CPU limit (none when unlimited).
    pub fn jobs(&self) -> Option<u64> {
        self.cpus.map(|c| c.ceil().max(1.0) as u64)
    }
}

/// The host's memory in MiB (`MemTotal`).
fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The host's CPUs.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How builds run: sandboxed in runc containers, or on the host.
#[derive(Debug, Clone)]
pub enum BuildSandbox {
    /// cargo runs on the host as hangar's user, with its network, files and
    /// cargo home: no isolation at all (`--driver process`, single-tenant
    /// development).
    Host,
    /// Every cargo invocation runs in a runc container.
    Runc(SandboxConfig),
}

impl BuildSandbox {
    /// What to say loudly at start, if anything.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            BuildSandbox::Host => Some(
                "builds run UNSANDBOXED on the host: a tenant's build scripts and proc macros run as hangar's user, with its network and every file it can read (state.db, secrets.key, admin-token); use --driver runc for tenants you do not trust",
            ),
            BuildSandbox::Runc(_) => None,
        }
    }
}

/// Settings of the runc sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state directory (`--root`) for build containers, private to
    /// this hangar (any container in it at start is a leftover).
    pub state_root: PathBuf,
    /// The sandbox's own directory: `rootfs/` (mount points only) and
    /// `bundles/<container id>/`.
    pub dir: PathBuf,
    /// Host uid and gid the build runs as (no user namespace).
    pub user: (u32, u32),
    /// cgroup limits.
    pub limits: BuildLimits,
}

/// A read-only or read-write bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside.
    pub destination: String,
    /// Writable.
    pub writable: bool,
}

impl Bind {
    /// A read-only bind.
    pub fn ro(source: impl Into<PathBuf>, destination: &str) -> Bind {
        Bind {
            source: source.into(),
            destination: destination.to_owned(),
            writable: false,
        }
    }

    /// A read-write bind.
    pub fn rw(source: impl Into<PathBuf>, destination: &str) -> Bind {
        Bind {
            writable: true,
            ..Bind::ro(source, destination)
        }
    }
}

/// One container to run: what it runs and what it sees beyond the system.
#[derive(Debug, Clone)]
pub struct Step {
    /// runc container id (also its cgroup's name).
    pub id: String,
    /// argv, with paths inside the container.
    pub args: Vec<String>,
    /// Working directory inside.
    pub cwd: String,
    /// `KEY=value` pairs (the whole environment).
    pub env: Vec<String>,
    /// Share the host's network (the fetch step); else a new, empty
    /// network namespace (only its own loopback).
    pub network: bool,
    /// uid and gid.
    pub user: (u32, u32),
    /// Binds after the system ones and the `/cargo` tmpfs (owned by
    /// `user`, so cargo can lock and track its caches there), in order: a
    /// bind inside an earlier one comes after it.
    pub binds: Vec<Bind>,
    /// cgroup limits.
    pub limits: BuildLimits,
}

/// How one container run ended.
#[derive(Debug)]
pub enum Exit {
    /// It exited with this status (`runc run` passes the container's on).
    Code(i32),
    /// Still running at the deadline: killed.
    TimedOut,
}

/// Why a container could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("runc could not run the build container: {0}")]
    Runc(String),
    #[error("{0}")]
    Output(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Where a container's stdout goes.
pub enum Stdout<'a> {
    /// Appended to the build log, like stderr.
    Log,
    /// Captured, up to this many bytes (more fails the run).
    Capture(&'a mut Vec<u8>, usize),
}

/// Runs `step` in a container (in the foreground) with its stdout and
/// stderr appended to `log`, killing it after `timeout`; the container is
/// deleted however it ends (and if this future is dropped).
pub async fn run(
    cfg: &SandboxConfig,
    step: &Step,
    log: &Path,
    stdout: Stdout<'_>,
    timeout: Duration,
) -> Result<Exit, SandboxError> {
    let sys = System::detect();
    let (rootfs, etc) = {
        // Several workers build at once; the shared root is made by one
        // at a time (idempotent, so only the first one writes).
        static ROOTFS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ROOTFS.lock().unwrap_or_else(|p| p.into_inner());
        prepare_rootfs(&cfg.dir, &sys, cfg.user)
            .map_err(io(format!("preparing {}", cfg.dir.display())))?
    };
    let bundle = cfg.dir.join("bundles").join(&step.id);
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).map_err(io(format!("creating {}", bundle.display())))?;
    std::fs::create_dir_all(&cfg.state_root)
        .map_err(io(format!("creating {}", cfg.state_root.display())))?;
    let config = spec(&rootfs, &etc, &sys, step);
    std::fs::write(bundle.join("config.json"), config.to_string())
        .map_err(io("writing the container's config.json"))?;
    // A container of this id left by a crash would make `runc run` fail.
    delete_container(&cfg.runc, &cfg.state_root, &step.id).await;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io("opening the build log"))
    };
    let runc_log = bundle.join("runc.log");
    let mut cmd = tokio::process::Command::new(&cfg.runc);
    cmd.arg("--root")
        .arg(&cfg.state_root)
        .arg("--log")
        .arg(&runc_log)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&step.id)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stderr(open()?)
        .kill_on_drop(true);
    let capture = match stdout {
        Stdout::Log => {
            cmd.stdout(open()?);
            None
        }
        Stdout::Capture(buf, cap) => {
            cmd.stdout(Stdio::piped());
            Some((buf, cap))
        }
    };
    let mut child = cmd.spawn().map_err(io("running runc"))?;
    // From here on, the container is removed however this ends.
    let guard = Cleanup {
        runc: cfg.runc.clone(),
        state_root: cfg.state_root.clone(),
        id: step.id.clone(),
        armed: true,
    };
    let mut pipe = child.stdout.take();
    let waited = tokio::time::timeout(timeout, async {
        let mut too_much = false;
        if let (Some(out), Some((buf, cap))) = (pipe.as_mut(), capture) {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match out.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if buf.len() + n > cap => {
                        too_much = true;
                        break;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        if too_much {
            return Err(SandboxError::Output(
                "the command printed more than hangar reads".into(),
            ));
        }
        child.wait().await.map_err(io("waiting for runc"))
    })
    .await;
    drop(pipe);
    let exit = match waited {
        Ok(Ok(status)) => Exit::Code(status.code().unwrap_or(-1)),
        Ok(Err(e)) => {
            guard.now().await;
            return Err(e);
        }
        Err(_) => Exit::TimedOut,
    };
    guard.now().await;
    let _ = child.wait().await;
    if let Exit::Code(code) = exit
        && code != 0
        && let Some(why) = runc_errors(&runc_log)
    {
        return Err(SandboxError::Runc(why));
    }
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(exit)
}

/// runc's own error lines (`level=error`/`fatal`) in its `--log`, if any.
fn runc_errors(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=fatal"))
        .collect();
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(3)..].join("\n"))
}

/// Kills and deletes a container: `runc kill --all <id> KILL`, then
/// `runc delete --force <id>`. Idempotent.
async fn delete_container(runc: &Path, state_root: &Path, id: &str) {
    for args in [
        &["kill", "--all", id, "KILL"][..],
        &["delete", "--force", id][..],
    ] {
        let _ = tokio::process::Command::new(runc)
            .arg("--root")
            .arg(state_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

/// The container ids of a build's steps (see `sandboxed`).
fn step_ids(build_id: &str) -> [String; 3] {
    [
        format!("build-{build_id}-fetch"),
        format!("build-{build_id}-meta"),
        format!("build-{build_id}"),
    ]
}

/// Stops everything a build runs (a cancel): kills and deletes each of its
/// step containers, then kills what is still in their cgroups, reaps the
/// dead ones handed to hangar, and removes the cgroups. A `runc run`
/// killed while it was creating a container leaves no state for `runc
/// kill` to find, though its `runc init` may already be in the cgroup; and
/// a container's processes whose `runc run` is gone are hangar's children
/// (a child subreaper) once they die, which nothing else waits for.
/// Bounded: gives up after `timeout`.
pub async fn stop_build(cfg: &SandboxConfig, build_id: &str, timeout: Duration) {
    let ids = step_ids(build_id);
    for id in &ids {
        delete_container(&cfg.runc, &cfg.state_root, id).await;
    }
    let dirs: Vec<PathBuf> = ids.iter().flat_map(|id| cgroup_dirs(id)).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    // Done once two looks in a row, 50 ms apart, find nothing.
    let mut quiet = 0;
    while quiet < 2 {
        let left = build_processes(&ids);
        if left.is_empty() {
            quiet += 1;
        } else {
            quiet = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(build = %build_id, ?left, "processes of a cancelled build outlived it");
            break;
        }
        for d in &dirs {
            // cgroup v2 kills the whole cgroup at once.
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        for p in &left {
            if p.zombie {
                if p.ours {
                    let mut code = 0;
                    // SAFETY: waitpid writes only to `code`, a valid local;
                    // the pid is a dead child of this process.
                    unsafe { libc::waitpid(p.pid, &mut code, libc::WNOHANG) };
                }
            } else {
                // SAFETY: kill has no memory-safety preconditions; the
                // process is in the build's own cgroup.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
    // A process can still die after two quiet looks: a container's init
    // whose `runc run` parent was killed first is reparented to hangar (a
    // child subreaper) once that parent is gone, and nothing else waits
    // for it. For a while, such zombies of the build are reaped here.
    tokio::spawn(async move {
        for _ in 0..REAP_LOOKS {
            tokio::time::sleep(REAP_EVERY).await;
            for p in build_processes(&ids) {
                if p.zombie && p.ours {
                    let mut code = 0;
                    // SAFETY: waitpid writes only to `code`, a valid local;
                    // the pid is a dead child of this process, in the
                    // build's cgroup (no tokio child lives there).
                    unsafe { libc::waitpid(p.pid, &mut code, libc::WNOHANG) };
                }
            }
        }
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
    });
}

/// How often, and how many times, a stopped build's late zombies are
/// looked for (10 s in all).
const REAP_EVERY: Duration = Duration::from_millis(200);
const REAP_LOOKS: u32 = 50;

/// A process found in a build's cgroups.
#[derive(Debug)]
struct Leftover {
    pid: i32,
    /// Dead, waiting to be reaped.
    zombie: bool,
    /// A child of this process (so this process may reap it).
    ours: bool,
}

/// The processes (zombies included) whose cgroup is one of `ids`'
/// (`/hangar-builds/<id>`), found through `/proc`: a zombie is no longer
/// listed in `cgroup.procs`.
fn build_processes(ids: &[String]) -> Vec<Leftover> {
    let me = std::process::id().to_string();
    let wanted: Vec<String> = ids
        .iter()
        .map(|id| format!("/hangar-builds/{id}\n"))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !wanted.iter().any(|w| cgroup.contains(w.as_str())) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        out.push(Leftover {
            pid,
            zombie: field("State:").starts_with('Z'),
            ours: field("PPid:") == me,
        });
    }
    out
}

/// The cgroup directories runc makes for a build container (its spec's
/// `cgroupsPath` is `/hangar-builds/<id>`): one in the unified hierarchy
/// (v2), or one per controller (v1).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let unified = root.join("hangar-builds").join(id);
    if root.join("cgroup.controllers").exists() {
        return vec![unified];
    }
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("hangar-builds").join(id))
                .filter(|d| d.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every container in the sandbox's runc state root: at start,
/// all of them are leftovers of builds a previous hangar was running.
/// Returns their ids.
pub async fn delete_leftovers(cfg: &SandboxConfig) -> Vec<String> {
    let out = tokio::process::Command::new(&cfg.runc)
        .arg("--root")
        .arg(&cfg.state_root)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .output()
        .await;
    let ids: Vec<String> = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    for id in &ids {
        delete_container(&cfg.runc, &cfg.state_root, id).await;
    }
    ids
}

/// Deletes the container when dropped unless [`Cleanup::now`] ran: a build
/// future dropped (hangar shutting down) leaves nothing running.
struct Cleanup {
    runc: PathBuf,
    state_root: PathBuf,
    id: String,
    armed: bool,
}

impl Cleanup {
    async fn now(mut self) {
        self.armed = false;
        delete_container(&self.runc, &self.state_root, &self.id).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for args in [
            &["kill", "--all", &self.id, "KILL"][..],
            &["delete", "--force", &self.id][..],
        ] {
            let _ = std::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.state_root)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_against_the_host() {
        let ok = BuildLimits::for_host();
        assert!(ok.check().is_ok(), "{ok:?}");
        assert!(ok.memory_mb <= BuildLimits::DEFAULT_MEMORY_MB);
        let bad = |l: BuildLimits| l.check().unwrap_err();
        assert!(bad(BuildLimits { memory_mb: 1, ..ok }).contains("memory"));
        assert!(
            bad(BuildLimits {
                memory_mb: u64::MAX / 2,
                ..ok
            })
            .contains("memory")
        );
        assert!(bad(BuildLimits { pids: 1, ..ok }).contains("pids"));
        let too_many = Some(host_cpus() as f64 + 1.0);
        assert!(
            bad(BuildLimits {
                cpus: too_many,
                ..ok
            })
            .contains("CPU")
        );
        assert!(
            bad(BuildLimits {
                cpus: Some(f64::NAN),
                ..ok
            })
            .contains("CPU")
        );
        assert_eq!(
            BuildLimits {
                cpus: Some(1.5),
                ..ok
            }
            .jobs(),
            Some(2)
        );
    }
}
