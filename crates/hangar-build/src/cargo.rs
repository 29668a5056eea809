//! Running cargo on the host, unsandboxed (`BuildSandbox::Host`, and
//! `hangar run`); the sandboxed runs are in `sandboxed.rs`.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

/// Environment passed through to cargo; everything else (tokens, hangar's
/// own settings) is withheld from build scripts.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "LANG",
    "TMPDIR",
    "CARGO_NET_OFFLINE",
    "CARGO_BUILD_JOBS",
];

fn cargo_command(cargo: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.env_clear();
    for key in KEPT_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("CARGO_TERM_COLOR", "never").stdin(Stdio::null());
    cmd
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    #[serde(default)]
    workspace_members: Vec<String>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: String,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The binary to build: the only bin target of the project, or, when there
/// are several, the one named like the root package.
pub async fn pick_binary(cargo: &Path, src: &Path) -> Result<String, String> {
    let manifest = src.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(
            "the archive has no Cargo.toml at its root: deploy a cargo project directory".into(),
        );
    }
    let out = cargo_command(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .await
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    pick_from_metadata(&out.stdout, &manifest.to_string_lossy())
}

/// The binary to build, from the JSON of `cargo metadata --no-deps` of
/// the project whose root manifest is `root_manifest` (as cargo names it).
pub(crate) fn pick_from_metadata(json: &[u8], root_manifest: &str) -> Result<String, String> {
    let meta: Metadata = serde_json::from_slice(json)
        .map_err(|e| format!("cargo metadata printed something unexpected: {e}"))?;
    let mut bins = Vec::new();
    let mut root_name = None;
    for p in meta
        .packages
        .iter()
        .filter(|p| meta.workspace_members.contains(&p.id))
    {
        if p.manifest_path == root_manifest {
            root_name = Some(p.name.clone());
        }
        for t in p
            .targets
            .iter()
            .filter(|t| t.kind.iter().any(|k| k == "bin"))
        {
            bins.push(t.name.clone());
        }
    }
    match bins.len() {
        0 => Err(
            "the project has no binary target (a src/main.rs or [[bin]]): nothing to run".into(),
        ),
        1 => Ok(bins.remove(0)),
        _ => match root_name.filter(|n| bins.contains(n)) {
            Some(n) => Ok(n),
            None => Err(format!(
                "the project has several binaries ({}) and none is named like the root package",
                bins.join(", ")
            )),
        },
    }
}

/// Runs `cargo build --release --bin <bin>` with output appended to `log`.
/// `on_pgid` is told the process group while cargo runs (and `None` after),
/// so a restarted hangar can kill an orphaned build.
#[allow(clippy::too_many_arguments)]
pub async fn build<F, Fut>(
    cargo: &Path,
    src: &Path,
    target_dir: &Path,
    bin: &str,
    extra_args: &[String],
    log: &Path,
    timeout: Duration,
    on_pgid: F,
) -> Result<(), String>
where
    F: Fn(Option<i64>) -> Fut,
    Fut: Future<Output = ()>,
{
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening the build log: {e}"))
    };
    let mut cmd = cargo_command(cargo);
    cmd.args(["build", "--release", "--bin", bin, "--manifest-path"])
        .arg(src.join("Cargo.toml"))
        .args(extra_args)
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(src)
        .stdout(open()?)
        .stderr(open()?)
        .kill_on_drop(true);
    // Own process group, so the whole tree (rustc, build scripts) can be killed.
    cmd.as_std_mut().process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    let pgid = child.id().map(i64::from);
    on_pgid(pgid).await;
    let result = tokio::time::timeout(timeout, child.wait()).await;
    let outcome = match result {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "cargo build failed ({status}); see the build log above"
        )),
        Ok(Err(e)) => Err(format!("waiting for cargo: {e}")),
        Err(_) => Err(format!(
            "cargo build took longer than {} s",
            timeout.as_secs()
        )),
    };
    if outcome.is_err()
        && let Some(pgid) = pgid
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    }
    on_pgid(None).await;
    outcome
}

/// Kills the process group of a cargo left running by a hangar that died,
/// if that group still looks like cargo (pids are reused).
pub fn kill_orphan(pgid: i64) {
    let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("cargo") {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    }
}
