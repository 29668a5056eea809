//! A build's cargo invocations in the runc sandbox (`sandbox.rs`), in
//! three containers:
//!
//! 1. **fetch** (`build-<id>-fetch`): `cargo fetch` with the host's network
//!    (unless builds are offline) and the cargo home's `registry` and `git`
//!    writable, run from `/` so the project's `.cargo/config.toml` is not
//!    read, with `RUSTC` fixed and no wrapper: none of the project's code
//!    runs. It sees the source read-only except `Cargo.lock`, which it may
//!    write (an archive without one gets it generated here). It runs as the
//!    owner of the cargo home's caches (root when hangar runs as root),
//!    with no capabilities.
//! 2. **metadata** (`build-<id>-meta`): `cargo metadata --no-deps`, to pick
//!    the binary; no network.
//! 3. **build** (`build-<id>`): `cargo build --release --frozen`, no
//!    network, the caches read-only, the target dir the only writable
//!    place. The project's own cargo config applies (it is sandboxed).
//!
//! The steps share one deadline (the build timeout).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sandbox::{self, Bind, Exit, SandboxConfig, Stdout, Step, paths};

/// The largest `cargo metadata` output read.
const MAX_METADATA_BYTES: usize = 64 * 1024 * 1024;

/// The line the build log gets when a sandboxed step fails for want of a
/// dependency (`offline`: this Hangar fetches from its cargo home only).
pub fn offline_hint(offline: bool) -> String {
    if offline {
        "==> hangar: builds run offline, and this Hangar fetches offline too (--build-offline or CARGO_NET_OFFLINE): `cargo fetch --offline` finds what Cargo.lock names only in its cargo home; a dependency that is not there cannot be downloaded\n".to_owned()
    } else {
        "==> hangar: builds run offline: first `cargo fetch` downloads what Cargo.lock names (with network, before any of the project's code runs), then `cargo build --frozen` runs without network; a dependency outside that cannot be downloaded during the build\n".to_owned()
    }
}

/// Cargo's locks in its home, as cargo names them.
const CARGO_LOCK_FILES: [&str; 2] = [".package-cache", ".package-cache-mutate"];

/// One build's cargo runs in the sandbox.
pub struct Sandboxed<'a> {
    cfg: &'a SandboxConfig,
    build_id: &'a str,
    /// The toolchain's sysroot on the host (bound at `/toolchain`).
    toolchain: PathBuf,
    /// `<cargo home>/registry` and `/git` on the host.
    registry: PathBuf,
    git: PathBuf,
    /// The cargo home's lock files (`.package-cache`, and the newer
    /// `.package-cache-mutate`): bound into the fetch step so its downloads
    /// take the same locks as every other cargo on the host (another
    /// build's fetch, the operator's own cargo). Without them two fetches
    /// unpack the same crate at once and one fails ("File exists").
    locks: Vec<PathBuf>,
    /// Who owns them: the fetch step's user.
    cache_owner: (u32, u32),
    src: &'a Path,
    target: &'a Path,
    runtime: Option<&'a Path>,
    offline: bool,
    deadline: Instant,
    timeout: Duration,
}

impl<'a> Sandboxed<'a> {
    /// Resolves the toolchain and cargo home and readies the target dir
    /// (owned by the build user). `runtime` is Hangar's runtime crates
    /// dir, bound when the build patches onto it.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        cfg: &'a SandboxConfig,
        build_id: &'a str,
        cargo: &Path,
        src: &'a Path,
        target: &'a Path,
        runtime: Option<&'a Path>,
        offline: bool,
        timeout: Duration,
    ) -> Result<Sandboxed<'a>, String> {
        let toolchain = toolchain_dir(cargo).await?;
        let home = cargo_home();
        let (registry, git) = (home.join("registry"), home.join("git"));
        for d in [&registry, &git] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let meta = std::fs::metadata(&registry)
            .map_err(|e| format!("reading {}: {e}", registry.display()))?;
        let mut locks = Vec::new();
        for name in CARGO_LOCK_FILES {
            let path = home.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            locks.push(path);
        }
        let user = cfg.user;
        let owned = target.to_owned();
        tokio::task::spawn_blocking(move || own_tree(&owned, user))
            .await
            .map_err(|e| format!("preparing the target dir: {e}"))?
            .map_err(|e| format!("preparing the target dir {}: {e}", target.display()))?;
        Ok(Sandboxed {
            cfg,
            build_id,
            toolchain,
            registry,
            git,
            locks,
            cache_owner: (meta.uid(), meta.gid()),
            src,
            target,
            runtime,
            offline,
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    /// The toolchain in use, for the log.
    pub fn toolchain(&self) -> &Path {
        &self.toolchain
    }

    /// `cargo fetch`: downloads what the lockfile names (writing
    /// `Cargo.lock` if the source has none or it lacks entries).
    pub async fn fetch(&self, patch: &[String], log: &Path) -> Result<(), String> {
        let lock = self.src.join("Cargo.lock");
        // The lockfile is the one file the fetch step may write: it must be
        // a plain file (no link to follow), made empty when missing (cargo
        // takes an empty lockfile for none).
        match std::fs::symlink_metadata(&lock) {
            Ok(m) if m.file_type().is_file() => {
                // Writable by its owner, who runs the fetch without the
                // capability to override permissions.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| format!("making Cargo.lock writable: {e}"))?;
            }
            Ok(_) => return Err("Cargo.lock must be a regular file".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&lock, "").map_err(|e| format!("creating Cargo.lock: {e}"))?
            }
            Err(e) => return Err(format!("reading Cargo.lock: {e}")),
        }
        let mut args = self.cargo(&["fetch", "--manifest-path", "/src/Cargo.toml"]);
        args.extend(patch.iter().cloned());
        if self.offline {
            args.push("--offline".into());
        }
        let mut binds = self.binds(true);
        binds.push(Bind::rw(&lock, "/src/Cargo.lock"));
        let step = Step {
            id: format!("build-{}-fetch", self.build_id),
            args,
            // Not under /src: cargo reads config from the cwd's ancestors,
            // and the project's (build.rustc, wrappers) must not apply.
            cwd: "/".into(),
            env: self.env("/tmp/target"),
            network: !self.offline,
            user: self.cache_owner,
            binds,
            limits: self.cfg.limits,
        };
        match self.run(&step, log, Stdout::Log).await? {
            0 => {}
            code => {
                return Err(format!(
                    "cargo fetch failed (exit status {code}); see the build log above"
                ));
            }
        }
        // Crates keep their archives' modes (0640 is common): what the fetch
        // added must be readable by the build user.
        let roots = [self.registry.join("src"), self.git.join("checkouts")];
        let stamp = self.cfg.dir.join("caches-readable");
        tokio::task::spawn_blocking(move || make_caches_readable(&roots, &stamp))
            .await
            .map_err(|e| format!("opening up the cargo caches: {e}"))?
            .map_err(|e| format!("opening up the cargo caches: {e}"))
    }

    /// `cargo metadata --no-deps`, then the binary to build.
    pub async fn pick_binary(&self, log: &Path) -> Result<String, String> {
        let mut out = Vec::new();
        let step = Step {
            id: format!("build-{}-meta", self.build_id),
            args: self.cargo(&[
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
                "--manifest-path",
                "/src/Cargo.toml",
            ]),
            cwd: paths::SRC.into(),
            env: self.env(paths::TARGET),
            network: false,
            user: self.cfg.user,
            binds: self.binds(false),
            limits: self.cfg.limits,
        };
        match self
            .run(&step, log, Stdout::Capture(&mut out, MAX_METADATA_BYTES))
            .await?
        {
            0 => crate::cargo::pick_from_metadata(&out, "/src/Cargo.toml"),
            code => Err(format!(
                "cargo metadata failed (exit status {code}); see the build log above"
            )),
        }
    }

    /// `cargo build --release --frozen --bin <bin>`.
    pub async fn build(&self, bin: &str, patch: &[String], log: &Path) -> Result<(), String> {
        let mut args = self.cargo(&[
            "build",
            "--release",
            "--frozen",
            "--bin",
            bin,
            "--manifest-path",
            "/src/Cargo.toml",
        ]);
        args.extend(patch.iter().cloned());
        let step = Step {
            id: format!("build-{}", self.build_id),
            args,
            cwd: paths::SRC.into(),
            env: self.env(paths::TARGET),
            network: false,
            user: self.cfg.user,
            binds: self.binds(false),
            limits: self.cfg.limits,
        };
        match self.run(&step, log, Stdout::Log).await? {
            0 => Ok(()),
            code => Err(format!(
                "cargo build failed (exit status {code}); see the build log above"
            )),
        }
    }

    /// Runs a step within what is left of the deadline; its exit status.
    async fn run(&self, step: &Step, log: &Path, stdout: Stdout<'_>) -> Result<i32, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match sandbox::run(self.cfg, step, log, stdout, left).await {
            Ok(Exit::Code(code)) => Ok(code),
            Ok(Exit::TimedOut) => Err(format!(
                "the build took longer than {} s; killed",
                self.timeout.as_secs()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// argv of the toolchain's cargo.
    fn cargo(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(format!("{}/bin/cargo", paths::TOOLCHAIN))
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    }

    /// The whole environment of a step.
    fn env(&self, target_dir: &str) -> Vec<String> {
        let tc = paths::TOOLCHAIN;
        let mut env = vec![
            format!("PATH={tc}/bin:/usr/bin:/bin"),
            "HOME=/tmp".to_owned(),
            "TMPDIR=/tmp".to_owned(),
            "LANG=C.UTF-8".to_owned(),
            format!("CARGO_HOME={}", paths::CARGO_HOME),
            format!("CARGO_TARGET_DIR={target_dir}"),
            format!("RUSTC={tc}/bin/rustc"),
            "CARGO_TERM_COLOR=never".to_owned(),
            // The caches are shared and (mostly) read-only: never collect.
            "CARGO_CACHE_AUTO_CLEAN_FREQUENCY=never".to_owned(),
        ];
        let jobs = std::env::var("CARGO_BUILD_JOBS")
            .ok()
            .filter(|j| j.parse::<u32>().is_ok())
            .or_else(|| self.cfg.limits.jobs().map(|j| j.to_string()));
        if let Some(jobs) = jobs {
            env.push(format!("CARGO_BUILD_JOBS={jobs}"));
        }
        if self.offline {
            env.push("CARGO_NET_OFFLINE=true".to_owned());
        }
        env
    }

    /// The binds of a step: toolchain, caches (writable for the fetch),
    /// runtime crates, source, and (not for the fetch) the target dir.
    fn binds(&self, fetch: bool) -> Vec<Bind> {
        let cache = |host: &Path, name: &str| {
            let inside = format!("{}/{name}", paths::CARGO_HOME);
            if fetch {
                Bind::rw(host, &inside)
            } else {
                Bind::ro(host, &inside)
            }
        };
        let mut binds = vec![
            Bind::ro(&self.toolchain, paths::TOOLCHAIN),
            cache(&self.registry, "registry"),
            cache(&self.git, "git"),
        ];
        if fetch {
            for lock in &self.locks {
                if let Some(name) = lock.file_name() {
                    let inside = format!("{}/{}", paths::CARGO_HOME, name.to_string_lossy());
                    binds.push(Bind::rw(lock, &inside));
                }
            }
        }
        if let Some(rt) = self.runtime {
            binds.push(Bind::ro(rt, paths::RUNTIME));
        }
        binds.push(Bind::ro(self.src, paths::SRC));
        if !fetch {
            binds.push(Bind::rw(self.target, paths::TARGET));
        }
        binds
    }
}

/// The sysroot of the toolchain `cargo` belongs to: `rustc --print
/// sysroot` of the rustc beside it (through rustup's proxy when `cargo`
/// is one, run from `/` so no directory override applies). It must hold
/// `bin/cargo` and `bin/rustc`.
pub async fn toolchain_dir(cargo: &Path) -> Result<PathBuf, String> {
    let cargo = if cargo.components().count() == 1 {
        find_in_path(cargo).ok_or_else(|| format!("{} is not on PATH", cargo.display()))?
    } else {
        cargo.to_owned()
    };
    let rustc = cargo.with_file_name("rustc");
    let mut cmd = tokio::process::Command::new(&rustc);
    cmd.args(["--print", "sysroot"])
        .current_dir("/")
        .env_clear()
        .stdin(std::process::Stdio::null());
    for key in [
        "PATH",
        "HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_HOME",
    ] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("running {} --print sysroot: {e}", rustc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --print sysroot failed: {}",
            rustc.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let sysroot = sysroot
        .canonicalize()
        .map_err(|e| format!("the toolchain {}: {e}", sysroot.display()))?;
    for tool in ["bin/cargo", "bin/rustc"] {
        if !sysroot.join(tool).is_file() {
            return Err(format!(
                "the toolchain {} has no {tool}: builds need cargo and rustc in one toolchain",
                sysroot.display()
            ));
        }
    }
    Ok(sysroot)
}

fn find_in_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The cargo home: `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Makes `dir` (created if missing) and everything in it owned by `user`,
/// with `lchown` and never following a link: a target dir of an older,
/// unsandboxed hangar, or one an unsandboxed build (`--driver process`)
/// wrote into since, has root's files the build user could not replace.
/// Only entries owned by someone else are changed; `dir` itself last.
pub fn own_tree(dir: &Path, user: (u32, u32)) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(std::io::Error::other("not a directory"));
        }
        Ok(m) => {
            chown_below(dir, user)?;
            if (m.uid(), m.gid()) == user {
                return Ok(());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)?,
        Err(e) => return Err(e),
    }
    std::os::unix::fs::lchown(dir, Some(user.0), Some(user.1))
}

fn chown_below(dir: &Path, user: (u32, u32)) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Neither file_type() nor symlink_metadata() follows a link: a link
        // is changed, never its target.
        if entry.file_type()?.is_dir() {
            chown_below(&path, user)?;
        }
        let m = std::fs::symlink_metadata(&path)?;
        if (m.uid(), m.gid()) != user {
            std::os::unix::fs::lchown(&path, Some(user.0), Some(user.1))?;
        }
    }
    Ok(())
}

/// Adds read permission for everyone (and search permission to
/// directories) to what is under `roots` (the cargo home's extracted
/// crates and git checkouts: public sources), never following a link.
/// Only directories changed since the last pass (recorded by `stamp`'s
/// mtime) are walked: a new crate's directory is new, old ones are skipped.
pub fn make_caches_readable(roots: &[PathBuf], stamp: &Path) -> std::io::Result<()> {
    let started = std::time::SystemTime::now();
    let since = std::fs::metadata(stamp)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| t - Duration::from_secs(10));
    for root in roots {
        if root.is_dir() {
            open_up(root, since, false)?;
        }
    }
    std::fs::write(stamp, "")?;
    std::fs::File::options()
        .write(true)
        .open(stamp)?
        .set_modified(started)
}

/// One directory of [`make_caches_readable`]: `all` when it is new.
fn open_up(dir: &Path, since: Option<std::time::SystemTime>, all: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_symlink() {
            continue;
        }
        let new = since.is_none_or(|t| m.modified().is_ok_and(|mt| mt >= t));
        let mode = m.permissions().mode() & 0o7777;
        if m.is_dir() {
            if all || new {
                if mode & 0o555 != 0o555 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o555))?;
                }
                open_up(&path, since, all || new)?;
            }
        } else if (all || new) && m.is_file() && mode & 0o444 != 0o444 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o444))?;
        }
    }
    Ok(())
}

/// Whether a failed build's log suggests cargo wanted the network.
pub fn wanted_network(log: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut tail = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut tail);
    let tail = String::from_utf8_lossy(&tail);
    [
        "offline mode",
        "--offline",
        "--frozen",
        "failed to download",
        "network",
        "Could not resolve host",
    ]
    .iter()
    .any(|hint| tail.contains(hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tree_changes_owners_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("release/deps")).unwrap();
        std::fs::write(target.join("release/deps/a"), "a").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("release/link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), target.join("dirlink")).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // lchown to another user needs root; the rest is still checked.
            assert!(own_tree(&target, (12_345, 12_345)).is_err());
            return;
        }
        let before = std::fs::metadata(&outside).unwrap().uid();
        own_tree(&target, (12_345, 12_346)).unwrap();
        for p in [
            "",
            "release",
            "release/deps",
            "release/deps/a",
            "release/link",
            "dirlink",
        ] {
            let m = std::fs::symlink_metadata(target.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (12_345, 12_346), "{p}");
        }
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            before,
            "link target untouched"
        );
        assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), before);
        // Files a root build added later are changed too.
        std::fs::write(target.join("release/deps/b"), "b").unwrap();
        own_tree(&target, (12_345, 12_346)).unwrap();
        let b = std::fs::metadata(target.join("release/deps/b")).unwrap();
        assert_eq!((b.uid(), b.gid()), (12_345, 12_346));
        // A missing dir is created owned by the user.
        let fresh = dir.path().join("fresh");
        own_tree(&fresh, (12_345, 12_346)).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().uid(), 12_345);
        // A link in place of the dir is refused.
        let link = dir.path().join("linked");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(own_tree(&link, (1, 1)).is_err());
    }

    #[test]
    fn caches_become_readable_and_links_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let krate = src.join("index/fnv-1.0.7");
        std::fs::create_dir_all(&krate).unwrap();
        std::fs::write(krate.join("lib.rs"), "").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "").unwrap();
        for p in [&krate.join("lib.rs"), &secret] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        std::os::unix::fs::symlink(&secret, krate.join("link")).unwrap();
        let stamp = dir.path().join("stamp");
        make_caches_readable(std::slice::from_ref(&src), &stamp).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&krate.join("lib.rs")), 0o644);
        assert_eq!(mode(&secret), 0o640, "a link's target is not touched");
        // A crate added later is found by the next pass.
        let later = src.join("index/itoa-1.0.0");
        std::fs::create_dir_all(&later).unwrap();
        std::fs::write(later.join("lib.rs"), "").unwrap();
        std::fs::set_permissions(later.join("lib.rs"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        make_caches_readable(&[src], &stamp).unwrap();
        assert_eq!(mode(&later.join("lib.rs")), 0o644);
    }

    #[tokio::test]
    async fn the_toolchain_is_a_real_sysroot() {
        let Some(cargo) = find_in_path(Path::new("cargo")) else {
            return;
        };
        let dir = toolchain_dir(&cargo).await.unwrap();
        assert!(dir.join("bin/rustc").is_file(), "{}", dir.display());
        assert!(
            !dir.starts_with(cargo_home().join("bin")),
            "not the rustup proxy dir"
        );
    }
}
