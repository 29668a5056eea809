//! What Hangar's own servers ([`crate::local_pg`], [`crate::local_redis`],
//! [`crate::local_nats`]) share: the unprivileged user they run as, their
//! private directory, files written without following links (the
//! directory belongs to that user, who could plant them), the port chosen
//! once, pid files and the processes they name.
//!
//! Errors are plain strings here; each server wraps them in its own
//! [`crate::ResourceError`] variant.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The unprivileged user a root Hangar runs a server as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// For messages.
    pub name: String,
}

impl RunAs {
    pub fn owner(run_as: Option<&RunAs>) -> Option<(u32, u32)> {
        run_as.map(|r| (r.uid, r.gid))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Who runs the server whose files are in `dir`: the current user unless
/// Hangar is root; then the owner of an existing `dir` (a server keeps the
/// user it was set up with), else `preferred` (`redis`, `nats`), else
/// `nobody`.
pub(crate) fn choose_run_as(dir: &Path, preferred: &str) -> Result<Option<RunAs>, String> {
    if !is_root() {
        return Ok(None);
    }
    if let Ok(meta) = std::fs::symlink_metadata(dir)
        && meta.is_dir()
        && meta.uid() != 0
    {
        let name = user_by_uid(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
        return Ok(Some(RunAs {
            uid: meta.uid(),
            gid: meta.gid(),
            name,
        }));
    }
    for name in [preferred, "nobody"] {
        if let Some((uid, gid)) = user_by_name(name).filter(|(uid, _)| *uid != 0) {
            return Ok(Some(RunAs {
                uid,
                gid,
                name: name.to_owned(),
            }));
        }
    }
    Err(format!(
        "Hangar runs as root and runs its servers unprivileged, but there is neither a `{preferred}` \
         nor a `nobody` user (create one: useradd --system {preferred})"
    ))
}

/// `/etc/passwd` entries: (name, uid, gid).
fn passwd() -> Vec<(String, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((name.to_owned(), uid, gid))
        })
        .collect()
}

pub(crate) fn user_by_name(name: &str) -> Option<(u32, u32)> {
    passwd()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, uid, gid)| (uid, gid))
}

pub(crate) fn user_by_uid(uid: u32) -> Option<String> {
    passwd()
        .into_iter()
        .find(|(_, u, _)| *u == uid)
        .map(|(n, _, _)| n)
}

/// Creates `dir` (not its parents' modes), makes it private (0700) and,
/// when the server runs as another user, owned by it and reachable by it.
/// `what` names the server in messages.
pub(crate) fn prepare_dir(dir: &Path, run_as: Option<&RunAs>, what: &str) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if let Some(r) = run_as {
        if meta.uid() != r.uid || meta.gid() != r.gid {
            std::os::unix::fs::lchown(dir, Some(r.uid), Some(r.gid))
                .map_err(|e| format!("cannot give {} to user {}: {e}", dir.display(), r.name))?;
        }
        for ancestor in dir.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                continue;
            }
            let m = std::fs::metadata(ancestor)
                .map_err(|e| format!("cannot inspect {}: {e}", ancestor.display()))?;
            // Supplementary groups do not count: the child drops them.
            let bit = if m.uid() == r.uid {
                0o100
            } else if m.gid() == r.gid {
                0o010
            } else {
                0o001
            };
            if m.mode() & bit == 0 {
                return Err(format!(
                    "Hangar's {what} runs as user {}, which cannot reach {}: {} is mode {:o}, owner uid {}; \
                     let it through (chmod o+x {}) or use a data dir it can reach",
                    r.name,
                    dir.display(),
                    ancestor.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    ancestor.display()
                ));
            }
        }
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

/// A fresh secret: 24 random bytes, hex.
pub(crate) fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The secret kept in `path` (0600), made on first use.
pub(crate) fn load_or_create_secret(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<String, String> {
    let file = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(text) = read_small(path).map_err(file)? {
        let secret = text.trim();
        if !(32..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{} does not hold a password Hangar wrote (hex digits)",
                path.display()
            ));
        }
        let meta = std::fs::symlink_metadata(path).map_err(file)?;
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(file)?;
        }
        return Ok(secret.to_owned());
    }
    let secret = random_hex()?;
    write_new(path, format!("{secret}\n").as_bytes(), 0o600, owner).map_err(file)?;
    Ok(secret)
}

/// The port kept in `path`, chosen on first use (a free one on 127.0.0.1,
/// none of `avoid`: ports other servers of Hangar's keep while stopped).
pub(crate) fn load_or_choose_port(
    path: &Path,
    owner: Option<(u32, u32)>,
    avoid: &[u16],
) -> Result<u16, String> {
    let file = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(text) = read_small(path).map_err(file)? {
        return text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!(
                    "{} does not hold a port number: {:?}",
                    path.display(),
                    text.trim()
                )
            });
    }
    for _ in 0..64 {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?
            .port();
        if !avoid.contains(&port) {
            write_new(path, format!("{port}\n").as_bytes(), 0o644, owner).map_err(file)?;
            return Ok(port);
        }
    }
    Err("cannot find a free port on 127.0.0.1 that no other server of Hangar's keeps".into())
}

/// The port a `port` file holds, if it holds one.
pub(crate) fn read_port(path: &Path) -> Option<u16> {
    read_small(path)
        .ok()
        .flatten()
        .and_then(|t| t.trim().parse().ok())
}

/// The port is free on 127.0.0.1 (nothing else listens there).
pub(crate) fn port_free(port: u16) -> std::io::Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port)).map(drop)
}

/// A small file's text, None if absent; links are not followed.
pub(crate) fn read_small(path: &Path) -> std::io::Result<Option<String>> {
    read_limited(path, 64 << 10)
}

pub(crate) fn read_limited(path: &Path, limit: u64) -> std::io::Result<Option<String>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.take(limit).read_to_end(&mut bytes)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Replaces `path` atomically with `bytes`, mode `mode`, given to `owner`,
/// never writing through a link.
pub(crate) fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Opens `path` for appending (created 0600 for `owner`), links not
/// followed: a server's stderr, next to its log.
pub(crate) fn open_append(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(f)
}

/// The last `lines` lines of a log (its last few KiB), links not followed.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    };
    read().unwrap_or_default()
}

/// `; see <log>: <its last lines>`, for error messages.
pub(crate) fn log_note(path: &Path) -> String {
    let tail = log_tail(path, 8);
    if tail.is_empty() {
        format!("; see {}", path.display())
    } else {
        format!("; see {}, which ends:\n{tail}", path.display())
    }
}

/// A program's stderr (else stdout), trimmed, for an error message.
pub(crate) fn output_text(out: &std::process::Output) -> String {
    let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text.to_owned()
    }
}

/// Everything the server creates (its log, pid file, data, a rewritten
/// ACL file) is private to it: umask 077.
pub(crate) fn private_umask(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, and
    // calls only umask, which is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
}

/// The process exists and is no zombie (a daemon whose parent is gone and
/// that nothing reaped still answers `kill 0`).
pub(crate) fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X'))
    });
    exists && !zombie
}

/// The pid in `pid_file`, if it names a live `program` working in `dir`
/// (a server's working directory is its own dir). A pid file whose pid is
/// gone, a zombie or another program now (after a reboot) is stale: it is
/// removed and None returned.
pub(crate) fn running_pid(
    pid_file: &Path,
    program: &str,
    dir: &Path,
) -> Result<Option<i32>, String> {
    let text =
        read_small(pid_file).map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    let Some(text) = text else {
        return Ok(None);
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0);
    let ours = pid.filter(|pid| {
        if !pid_alive(*pid) {
            return false;
        }
        // Unreadable (no /proc): take it as ours.
        let cwd_ok = std::fs::read_link(format!("/proc/{pid}/cwd")).map_or(true, |cwd| cwd == dir);
        let comm_ok = std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |comm| {
            program.starts_with(comm.trim()) || comm.trim().starts_with(program)
        });
        cwd_ok && comm_ok
    });
    match ours {
        Some(pid) => Ok(Some(pid)),
        None => {
            tracing::warn!(
                file = %pid_file.display(),
                "stale pid file: its process is gone, a zombie or another program; removing it"
            );
            reap(pid.unwrap_or(0));
            match std::fs::remove_file(pid_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
                    "cannot remove the stale {}: {e}",
                    pid_file.display()
                )),
                _ => Ok(None),
            }
        }
    }
}

/// Reaps `pid` if it is an exited child of ours (Hangar is a subreaper, so
/// a daemon it started comes back to it); nothing otherwise.
pub(crate) fn reap(pid: i32) {
    if pid <= 0 {
        return;
    }
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, a valid local.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: i32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: sending a signal has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Stops `pid`: SIGTERM, then SIGKILL after `grace`; waits until it is
/// gone. Whether it had to be killed.
pub(crate) async fn terminate(pid: i32, grace: Duration) -> bool {
    let _ = signal(pid, libc::SIGTERM);
    if wait_gone(pid, grace).await {
        return false;
    }
    let _ = signal(pid, libc::SIGKILL);
    wait_gone(pid, Duration::from_secs(5)).await;
    true
}

/// Waits until `pid` is gone (reaping it if it is our child).
pub(crate) async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        reap(pid);
        if !pid_alive(pid) {
            reap(pid);
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `path` as a double-quoted string for a config file, or an error for a
/// path no config file could name safely.
pub(crate) fn quoted_path(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .filter(|s| !s.contains(['"', '\\', '\'']) && !s.chars().any(char::is_control))
        .ok_or_else(|| {
            format!(
                "{} has characters a server's config file cannot hold (quotes, backslashes, control characters): use another data dir",
                path.display()
            )
        })?;
    Ok(format!("\"{s}\""))
}

/// The names of the subdirectories of `dir` that are valid resource keys
/// (app ids, or app names for those made before keys were ids).
pub(crate) fn app_dirs(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| crate::ResourceKey::parse(n).is_ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_for_config_files() {
        assert_eq!(
            quoted_path(Path::new("/var/lib/h")).unwrap(),
            "\"/var/lib/h\""
        );
        for bad in ["/a\"b", "/a\\b", "/a\nb", "/a'b"] {
            assert!(quoted_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port");
        let port = load_or_choose_port(&path, None, &[]).unwrap();
        assert_eq!(load_or_choose_port(&path, None, &[]).unwrap(), port);
        assert_eq!(read_port(&path), Some(port));
        std::fs::write(&path, "x").unwrap();
        assert!(load_or_choose_port(&path, None, &[]).is_err());
    }
}
