//! Runtime drivers: the only code that starts or signals machine processes.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

mod exec;
mod oci;
mod procs;

pub use exec::{EXEC_OUTPUT_MAX, ExecOutput};
use oci::oci_config;
pub use procs::{ProcInfo, proc_info};

#[cfg(test)]
mod tests;

/// Which driver the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// runc when it is installed and we are root; otherwise hangar
    /// refuses to start (never a silent fall back to no isolation).
    Auto,
    /// runc or fail.
    Runc,
    /// Plain processes, no isolation.
    Process,
}

/// cgroup limits of one machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Hard memory limit; past it the kernel OOM-kills inside the machine.
    pub memory_mb: u64,
    /// Maximum number of tasks (stops fork bombs).
    pub pids: u64,
    /// CPU quota in whole or fractional CPUs.
    pub cpus: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 512,
            pids: 512,
            cpus: 1.0,
        }
    }
}

/// Everything a driver needs to start one machine.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Machine id; also the runc container id and cgroup name.
    pub id: String,
    /// The app's name, used as the container's hostname.
    pub hostname: String,
    /// The image's unpacked root filesystem (shared, mounted read-only).
    pub rootfs: PathBuf,
    /// Private directory of this machine (runc bundle).
    pub dir: PathBuf,
    /// argv, with paths inside the image.
    pub argv: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the image.
    pub cwd: String,
    /// uid and gid inside the machine (no user namespace: also on the host).
    pub user: (u32, u32),
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// cgroup limits.
    pub limits: Limits,
    /// Indexes of the NVIDIA GPUs passed in (`/dev/nvidia<i>`).
    pub gpus: Vec<u32>,
    /// Host directory holding `resources.json` (credentials and secrets,
    /// on tmpfs): bound read-only at [`RESOURCES_DIR`] in a runc machine;
    /// a process machine reads it in place. `$HANGAR_RESOURCES` names the
    /// file either way.
    pub resources: Option<PathBuf>,
    /// The machine's link (runc machines with their own address): runc
    /// makes a new network namespace, wired by [`crate::network::attach`]
    /// before the machine's process starts; `None`: an empty namespace
    /// (runc) or the host's network (process driver).
    pub net: Option<crate::network::MachineNet>,
    /// The host uid the machine's uid 0 is (a user namespace mapping
    /// 65536 uids from there, which owns the network namespace); `None`:
    /// no user namespace.
    pub uid_base: Option<u32>,
}

/// Where a runc machine sees its resources directory.
pub const RESOURCES_DIR: &str = "/run/hangar";
/// The resources file's name in that directory.
pub const RESOURCES_FILE: &str = "resources.json";

/// Why a driver could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("runc is required (--driver runc) but {0}")]
    RuncUnavailable(String),
    #[error(
        "{0}: refusing to run tenants' apps without isolation. Install runc and run hangar as root, \
         or pass --driver process for single-tenant development (no isolation at all)"
    )]
    Unisolated(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("runc {action} failed: {stderr}")]
    Runc { action: String, stderr: String },
    #[error("the image has no command to run")]
    NoCommand,
    #[error("exec of {prog} was still running after {secs} s; it was killed")]
    ExecTimedOut { prog: String, secs: u64 },
    #[error("wiring the machine's network: {0}")]
    Network(#[from] crate::network::NetworkError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let what = what.into();
    move |source| DriverError::Io { what, source }
}

/// A runtime driver.
#[derive(Debug, Clone)]
pub enum Driver {
    /// OCI containers via runc.
    Runc {
        /// The runc binary.
        runc: PathBuf,
        /// runc's state directory (`--root`), private to this hangar.
        state_root: PathBuf,
    },
    /// Plain processes in their own process group; no isolation at all.
    Process,
}

impl Driver {
    /// Picks a driver. Returns a warning to print loudly when falling back.
    pub fn choose(
        choice: DriverChoice,
        state_root: &Path,
    ) -> Result<(Driver, Option<String>), DriverError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Self::decide(choice, find_in_path("runc"), root, state_root)
    }

    /// [`Driver::choose`] given what the host has (pure, unit-tested).
    fn decide(
        choice: DriverChoice,
        runc: Option<PathBuf>,
        root: bool,
        state_root: &Path,
    ) -> Result<(Driver, Option<String>), DriverError> {
        let problem = match (&runc, root) {
            (None, _) => Some("runc is not installed (apt-get install runc)".to_owned()),
            (Some(_), false) => Some("hangar is not running as root".to_owned()),
            _ => None,
        };
        match (choice, problem, runc) {
            (DriverChoice::Process, _, _) => Ok((
                Driver::Process,
                Some("driver 'process' chosen: apps and builds run as plain processes with NO isolation and NO limits; this hangar serves one organisation only".into()),
            )),
            (_, None, Some(runc)) => Ok((
                Driver::Runc {
                    runc,
                    state_root: state_root.to_owned(),
                },
                None,
            )),
            (DriverChoice::Runc, p, _) => Err(DriverError::RuncUnavailable(
                p.unwrap_or_else(|| "runc was not found".into()),
            )),
            // Never a silent fall back to no isolation: tenants' code would
            // run as hangar's own user, next to every secret.
            (DriverChoice::Auto, p, _) => Err(DriverError::Unisolated(
                p.unwrap_or_else(|| "runc was not found".into()),
            )),
        }
    }

    /// `runc` or `process`, as stored with each machine.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Runc { .. } => "runc",
            Driver::Process => "process",
        }
    }

    /// Starts the machine; returns the host pid of its main process.
    pub async fn start(&self, spec: &MachineSpec) -> Result<u32, DriverError> {
        fs::create_dir_all(&spec.dir).map_err(io(format!("creating {}", spec.dir.display())))?;
        if let Some(parent) = spec.log.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(io(format!("opening {}", spec.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io(format!("opening {}", spec.log.display())))?;
        match self {
            Driver::Runc { runc, state_root } => {
                let config = oci_config(spec)?;
                let path = spec.dir.join("config.json");
                fs::write(&path, config.to_string())
                    .map_err(io(format!("writing {}", path.display())))?;
                let pid_file = spec.dir.join("pid");
                let _ = fs::remove_file(&pid_file);
                // A container of the same id left over from a crash would make
                // `runc run` fail; it is ours, so remove it.
                let _ = runc_cmd(runc, state_root, &["delete", "--force", &spec.id]).await;
                // `create`, then the machine's link, then `start`: runc
                // makes the namespaces, Hangar wires the network one before
                // the app's first instruction. runc hands the container our
                // log file as its stdout and stderr and exits.
                // runc's own errors go to a file of their own: its stderr is
                // the container's, and the container's is the app log.
                let runc_log = spec.dir.join("runc.log");
                let _ = fs::remove_file(&runc_log);
                let t0 = std::time::Instant::now();
                let out = Command::new(runc)
                    .arg("--root")
                    .arg(state_root)
                    .arg("--log")
                    .arg(&runc_log)
                    .args(["create", "--bundle"])
                    .arg(&spec.dir)
                    .arg("--pid-file")
                    .arg(&pid_file)
                    .arg(&spec.id)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    // status(), not output(): output() would pipe stdout and
                    // wait for EOF, which never comes while the app runs.
                    .status()
                    .await
                    .map_err(io("running runc"))?;
                if !out.success() {
                    let mut why = tail_of(&runc_log, 3);
                    if why.is_empty() {
                        why = tail_of(&spec.log, 5);
                    }
                    return Err(DriverError::Runc {
                        action: "create".into(),
                        stderr: why,
                    });
                }
                let started = async {
                    let pid = fs::read_to_string(&pid_file)
                        .map_err(io("reading runc's pid file"))?
                        .trim()
                        .parse::<u32>()
                        .map_err(|e| DriverError::Runc {
                            action: "create".into(),
                            stderr: format!("bad pid file: {e}"),
                        })?;
                    let t1 = std::time::Instant::now();
                    if let Some(net) = &spec.net {
                        crate::network::attach(net, pid).await?;
                    }
                    let t2 = std::time::Instant::now();
                    runc_ok(runc, state_root, &["start", &spec.id]).await?;
                    tracing::debug!(
                        machine = %spec.id,
                        create_us = (t1 - t0).as_micros() as u64,
                        link_us = (t2 - t1).as_micros() as u64,
                        start_us = t2.elapsed().as_micros() as u64,
                        "machine started"
                    );
                    Ok(pid)
                }
                .await;
                if started.is_err() {
                    let _ = runc_cmd(runc, state_root, &["delete", "--force", &spec.id]).await;
                }
                started
            }
            Driver::Process => {
                let (prog, args) = spec.argv.split_first().ok_or(DriverError::NoCommand)?;
                let prog = spec.rootfs.join(prog.trim_start_matches('/'));
                let cwd = spec.rootfs.join(spec.cwd.trim_start_matches('/'));
                let mut cmd = std::process::Command::new(&prog);
                cmd.args(args)
                    .current_dir(&cwd)
                    .env_clear()
                    .envs(spec.env.iter().filter_map(|kv| kv.split_once('=')));
                if let Some(dir) = &spec.resources {
                    cmd.env("HANGAR_RESOURCES", dir.join(RESOURCES_FILE));
                }
                cmd.stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    // Its own process group: stopping signals the whole group,
                    // and a Ctrl-C aimed at hangar does not reach it.
                    .process_group(0);
                let child = cmd
                    .spawn()
                    .map_err(io(format!("starting {}", prog.display())))?;
                // Dropping a std Child neither kills nor reaps it: the agent's
                // monitor reaps it with waitpid, like a runc container.
                Ok(child.id())
            }
        }
    }

    /// Stops the machine: `signal`, then SIGKILL after `grace`; then removes
    /// the container. Idempotent.
    pub async fn stop(
        &self,
        id: &str,
        pid: Option<u32>,
        signal: i32,
        grace: Duration,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Runc { runc, state_root } => {
                // A frozen container cannot act on a signal: thaw it first.
                let _ = runc_cmd(runc, state_root, &["resume", id]).await;
                let _ = runc_cmd(runc, state_root, &["kill", id, &signal.to_string()]).await;
                if !wait_gone(pid, grace).await {
                    let _ = runc_cmd(runc, state_root, &["kill", "--all", id, "KILL"]).await;
                    wait_gone(pid, Duration::from_secs(5)).await;
                }
                let out = runc_cmd(runc, state_root, &["delete", "--force", id]).await?;
                if !out.status.success() {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    if !stderr.contains("does not exist") && !stderr.contains("not exist") {
                        return Err(DriverError::Runc {
                            action: "delete".into(),
                            stderr: stderr.trim().to_owned(),
                        });
                    }
                }
                Ok(())
            }
            Driver::Process => {
                if let Some(pid) = pid {
                    signal_group(pid, libc::SIGCONT);
                    signal_group(pid, signal);
                    if !wait_gone(Some(pid), grace).await {
                        signal_group(pid, libc::SIGKILL);
                        wait_gone(Some(pid), Duration::from_secs(5)).await;
                    }
                }
                Ok(())
            }
        }
    }

    /// Freezes every process of the machine, memory kept (cgroup freezer).
    pub async fn pause(&self, id: &str, pid: Option<u32>) -> Result<(), DriverError> {
        match self {
            Driver::Runc { runc, state_root } => runc_ok(runc, state_root, &["pause", id]).await,
            Driver::Process => {
                if let Some(pid) = pid {
                    signal_group(pid, libc::SIGSTOP);
                }
                Ok(())
            }
        }
    }

    /// Whether the machine's processes are frozen now (its cgroup's freezer
    /// file, v1 or v2); `None` when that cannot be read (the process
    /// driver, or no such cgroup).
    pub fn is_frozen(&self, id: &str) -> Option<bool> {
        match self {
            Driver::Runc { .. } => frozen_cgroup(id),
            Driver::Process => None,
        }
    }

    /// Thaws a paused machine. With runc this writes the freezer state
    /// directly (what `runc resume` does) when the cgroup is where Hangar
    /// put it: a resume is on the path of a waiting request, and sparing a
    /// runc process saves most of its time.
    pub async fn resume(&self, id: &str, pid: Option<u32>) -> Result<(), DriverError> {
        match self {
            Driver::Runc { runc, state_root } => {
                if thaw_cgroup(id) {
                    return Ok(());
                }
                runc_ok(runc, state_root, &["resume", id]).await
            }
            Driver::Process => {
                if let Some(pid) = pid {
                    signal_group(pid, libc::SIGCONT);
                }
                Ok(())
            }
        }
    }

    /// The ids of every container in this driver's state root (none for
    /// the process driver).
    pub async fn containers(&self) -> Result<Vec<String>, DriverError> {
        match self {
            Driver::Runc { runc, state_root } => {
                let out = runc_cmd(runc, state_root, &["list", "-q"]).await?;
                if !out.status.success() {
                    return Err(DriverError::Runc {
                        action: "list".into(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    });
                }
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect())
            }
            Driver::Process => Ok(Vec::new()),
        }
    }

    /// Kills and deletes a container nothing owns any more.
    pub async fn remove_orphan(&self, id: &str) -> Result<(), DriverError> {
        if let Driver::Runc { runc, state_root } = self {
            runc_ok(runc, state_root, &["delete", "--force", id]).await?;
        }
        Ok(())
    }

    /// After the machine's process exited on its own: whether the kernel's
    /// OOM killer did it (read from its memory cgroup, which still exists
    /// until the container is deleted), then removal of the container.
    pub async fn reap(&self, id: &str) -> bool {
        match self {
            Driver::Runc { runc, state_root } => {
                let oom = oom_kills(id) > 0;
                let _ = runc_cmd(runc, state_root, &["delete", "--force", id]).await;
                oom
            }
            Driver::Process => false,
        }
    }
}

/// Thaws a machine's cgroup by writing its freezer file (v1 `freezer.state`
/// or v2 `cgroup.freeze`) and waiting until the kernel reports it thawed.
/// False when the file is not there (the caller falls back to runc).
fn thaw_cgroup(id: &str) -> bool {
    let (v1, v2) = freezer_files(id);
    if fs::write(&v1, "THAWED").is_ok() {
        for _ in 0..1000 {
            match fs::read_to_string(&v1) {
                Ok(s) if s.trim() == "THAWED" => return true,
                Ok(_) => std::thread::yield_now(),
                Err(_) => return false,
            }
        }
        return false;
    }
    fs::write(v2, "0").is_ok()
}

/// A machine's freezer files: cgroup v1's `freezer.state` and v2's
/// `cgroup.freeze` (where runc puts the machine's cgroup).
fn freezer_files(id: &str) -> (String, String) {
    (
        format!("/sys/fs/cgroup/freezer/hangar/{id}/freezer.state"),
        format!("/sys/fs/cgroup/hangar/{id}/cgroup.freeze"),
    )
}

/// Whether a machine's cgroup is frozen (v1 `freezer.state` FROZEN, v2
/// `cgroup.freeze` 1); `None` if neither file can be read.
fn frozen_cgroup(id: &str) -> Option<bool> {
    let (v1, v2) = freezer_files(id);
    if let Ok(s) = fs::read_to_string(v1) {
        return Some(s.trim() == "FROZEN");
    }
    fs::read_to_string(v2).ok().map(|s| s.trim() == "1")
}

/// Puts every machine under one memory and pids limit (the `hangar`
/// parent cgroup that runc creates each machine's cgroup in), so machines
/// together never take the host's last memory; and makes hangar itself
/// the OOM killer's last pick among its children. cgroup v1 or v2.
pub fn limit_all_machines(memory_bytes: u64, pids: u64) -> Result<(), DriverError> {
    let set = |path: String, value: String| -> Result<(), DriverError> {
        if let Some(dir) = Path::new(&path).parent() {
            fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        fs::write(&path, &value).map_err(io(format!("writing {value} to {path}")))
    };
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        set(
            "/sys/fs/cgroup/memory/hangar/memory.limit_in_bytes".into(),
            memory_bytes.to_string(),
        )?;
        if Path::new("/sys/fs/cgroup/pids").is_dir() {
            set(
                "/sys/fs/cgroup/pids/hangar/pids.max".into(),
                pids.to_string(),
            )?;
        }
    } else {
        // v2: the controllers must be enabled for the parent's children.
        let _ = fs::write(
            "/sys/fs/cgroup/cgroup.subtree_control",
            "+memory +pids +cpu",
        );
        set(
            "/sys/fs/cgroup/hangar/memory.max".into(),
            memory_bytes.to_string(),
        )?;
        set("/sys/fs/cgroup/hangar/pids.max".into(), pids.to_string())?;
        let _ = fs::write(
            "/sys/fs/cgroup/hangar/cgroup.subtree_control",
            "+memory +pids +cpu",
        );
    }
    // Lowering needs CAP_SYS_RESOURCE, which a host in a container may
    // lack; machines still get +500, so they are picked first either way.
    if let Err(e) = fs::write("/proc/self/oom_score_adj", "-500") {
        tracing::warn!("cannot lower hangar's oom_score_adj ({e}); machines still have +500");
    }
    Ok(())
}

/// The host's memory, from `/proc/meminfo` (bytes).
pub fn host_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// OOM kills recorded in a machine's memory cgroup (v1 `memory.oom_control`
/// or v2 `memory.events`).
fn oom_kills(id: &str) -> u64 {
    let v1 = format!("/sys/fs/cgroup/memory/hangar/{id}/memory.oom_control");
    let v2 = format!("/sys/fs/cgroup/hangar/{id}/memory.events");
    let text = fs::read_to_string(v1)
        .or_else(|_| fs::read_to_string(v2))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Device nodes `(path, major, minor)` and read-only binds `(host, inside)`.
pub type GpuPassthrough = (Vec<(String, u64, u64)>, Vec<(PathBuf, PathBuf)>);

/// What a machine with `gpus` needs from the host: the device nodes
/// (path, major, minor) of those GPUs and of the driver's control devices,
/// and read-only binds (host path, path inside) of `nvidia-smi`, the
/// driver's user-space libraries (NVML, CUDA) and what `nvidia-smi` links.
pub fn gpu_passthrough(gpus: &[u32]) -> GpuPassthrough {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut paths: Vec<String> = [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
    ]
    .iter()
    .map(|n| format!("/dev/{n}"))
    .collect();
    paths.extend(gpus.iter().map(|i| format!("/dev/nvidia{i}")));
    let mut devices = Vec::new();
    for p in paths {
        if let Ok(meta) = fs::metadata(&p)
            && meta.file_type().is_char_device()
        {
            let rdev = meta.rdev();
            devices.push((
                p,
                u64::from(libc::major(rdev)),
                u64::from(libc::minor(rdev)),
            ));
        }
    }
    let mut binds = Vec::new();
    let smi = [
        "/usr/bin/nvidia-smi",
        "/usr/local/nvidia/bin/nvidia-smi",
        "/usr/local/bin/nvidia-smi",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    let lib_dir = PathBuf::from("/usr/lib/x86_64-linux-gnu");
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib",
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libnvidia-ml.so") || name.starts_with("libcuda.so") {
                // Inside, they go where the loader looks without a cache.
                binds.push((e.path(), lib_dir.join(&name)));
            }
        }
    }
    if let Some(smi) = smi {
        for lib in hangar_image::shared_libraries(&smi).unwrap_or_default() {
            binds.push((lib.clone(), lib));
        }
        binds.push((smi, PathBuf::from("/usr/bin/nvidia-smi")));
    }
    binds.sort();
    binds.dedup_by(|a, b| a.1 == b.1);
    (devices, binds)
}

/// NVIDIA GPUs on this host (`/dev/nvidia0`, `/dev/nvidia1`, …).
pub fn detect_gpus() -> u32 {
    (0..64)
        .take_while(|i| Path::new(&format!("/dev/nvidia{i}")).exists())
        .count() as u32
}

async fn runc_ok(runc: &Path, state_root: &Path, args: &[&str]) -> Result<(), DriverError> {
    let out = runc_cmd(runc, state_root, args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DriverError::Runc {
            action: args.first().copied().unwrap_or_default().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

async fn runc_cmd(
    runc: &Path,
    state_root: &Path,
    args: &[&str],
) -> Result<std::process::Output, DriverError> {
    Command::new(runc)
        .arg("--root")
        .arg(state_root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io(format!("running runc {}", args.join(" "))))
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid is an
    // ESRCH error, which we ignore.
    unsafe {
        libc::kill(-(pid as i32), sig);
        libc::kill(pid as i32, sig);
    }
}

/// What a machine's main process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    /// Exited; the status is known when we reaped it ourselves.
    Exited(Option<i64>),
}

/// Checks (and reaps, when it is our child) the process `pid`.
pub fn probe(pid: u32) -> ProcState {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes only to `status`, a valid local.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if r == pid as i32 {
        let code = if libc::WIFEXITED(status) {
            i64::from(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            128 + i64::from(libc::WTERMSIG(status))
        } else {
            -1
        };
        return ProcState::Exited(Some(code));
    }
    if r == 0 {
        return ProcState::Running;
    }
    // Not our child (e.g. adopted after a restart of hangar): look in /proc.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state letter follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if matches!(state, Some('Z') | Some('X')) {
                ProcState::Exited(None)
            } else {
                ProcState::Running
            }
        }
        Err(_) => ProcState::Exited(None),
    }
}

/// Waits until `pid` is gone, up to `timeout`. True when it is gone.
async fn wait_gone(pid: Option<u32>, timeout: Duration) -> bool {
    let Some(pid) = pid else { return true };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let ProcState::Exited(_) = probe(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes this process the reaper of orphaned descendants, so containers whose
/// runc has exited stay our children: we get their exit status.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The last `n` lines of a file, for error messages: read from its last
/// 64 KiB, whatever its size.
pub fn tail_of(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let mut text = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_ok() {
            let _ = f.take(MAX).read_to_end(&mut text);
        }
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
