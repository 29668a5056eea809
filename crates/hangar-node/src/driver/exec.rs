//! `exec`: a command run inside a running machine for the Machines API.
//!
//! The tenant chooses the command, so its output and its lifetime are
//! bounded here: each stream keeps at most [`EXEC_OUTPUT_MAX`] bytes (the
//! rest is read and dropped, so the command never blocks on a full pipe),
//! and at the timeout the command is killed inside the machine, with every
//! process it started, not only the `runc exec` that launched it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{Driver, DriverError, io};

/// Bytes of stdout and of stderr an exec answer keeps.
pub const EXEC_OUTPUT_MAX: usize = 1 << 20;

/// What an exec printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code (128 + signal when killed by one, -1 if unknown).
    pub code: i32,
    /// The first [`EXEC_OUTPUT_MAX`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// The first [`EXEC_OUTPUT_MAX`] bytes of stderr.
    pub stderr: Vec<u8>,
    /// True when a stream printed more than it kept.
    pub truncated: bool,
}

impl Driver {
    /// Runs a command inside a running machine. Past `timeout` the command
    /// and its descendants are killed and the answer is an error.
    pub async fn exec(
        &self,
        id: &str,
        rootfs: &Path,
        argv: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, DriverError> {
        let (prog, args) = argv.split_first().ok_or(DriverError::NoCommand)?;
        let pid_file = tempfile::Builder::new()
            .prefix("hangar-exec-")
            .tempfile()
            .map_err(io("making the exec's pid file"))?;
        let mut cmd = match self {
            Driver::Runc { runc, state_root } => {
                let mut cmd = Command::new(runc);
                cmd.arg("--root").arg(state_root).arg("exec");
                // The host pid of the command itself, to kill it (and what
                // it started) at the timeout: killing `runc exec` leaves
                // the command running inside the machine.
                cmd.arg("--pid-file").arg(pid_file.path());
                for kv in env {
                    cmd.arg("--env").arg(kv);
                }
                cmd.arg(id).arg(prog).args(args);
                cmd
            }
            Driver::Process => {
                let mut cmd = Command::new(rootfs.join(prog.trim_start_matches('/')));
                cmd.args(args)
                    .env_clear()
                    .envs(env.iter().filter_map(|kv| kv.split_once('=')));
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(io("running the exec command"))?;
        let direct_pid = child.id();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(DriverError::Io {
                what: "running the exec command".into(),
                source: std::io::Error::other("its output pipes were not set up"),
            });
        };
        let run = async {
            let (out, err, status) = tokio::join!(capped(stdout), capped(stderr), child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((out, err, status)) => {
                let status = status.map_err(io("waiting for the exec command"))?;
                let code = status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    status.signal().map_or(-1, |s| 128 + s)
                });
                let (stdout, t1) = out.map_err(io("reading the exec's stdout"))?;
                let (stderr, t2) = err.map_err(io("reading the exec's stderr"))?;
                Ok(ExecOutput {
                    code,
                    stdout,
                    stderr,
                    truncated: t1 || t2,
                })
            }
            Err(_) => {
                // The command inside the machine (runc wrote its host pid),
                // or the direct child under the process driver.
                let inside = std::fs::read_to_string(pid_file.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(pid) = inside.or(direct_pid.map(|p| p as i32)) {
                    kill_tree(pid);
                }
                let _ = child.kill().await;
                Err(DriverError::ExecTimedOut {
                    prog: prog.clone(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }
}

/// Reads a stream to its end, keeping the first [`EXEC_OUTPUT_MAX`] bytes;
/// true when it dropped some.
async fn capped(mut stream: impl AsyncRead + Unpin) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = EXEC_OUTPUT_MAX - kept.len();
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// SIGKILLs `pid` and every descendant it has now (read from
/// `/proc/PID/task/TID/children`), leaves first so none is reparented
/// out of reach. Pids that are gone are skipped.
fn kill_tree(pid: i32) {
    let mut order = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        order.push(p);
        if order.len() > 100_000 {
            break;
        }
        todo.extend(children(p));
    }
    // Stop them all first, so none forks while the others die.
    for p in &order {
        // SAFETY: kill(2) with a pid read from /proc; no memory is touched.
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    for p in order.iter().rev() {
        // SAFETY: as above.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_capped_and_the_rest_drained() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("loud");
        // 3 MiB on stdout, then a word on stderr: the command finishes
        // (never blocked on a full pipe) and stdout is cut at the cap.
        std::fs::write(
            &script,
            "#!/bin/sh\nhead -c 3145728 /dev/zero\necho done >&2\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let argv = vec!["loud".to_owned()];
        let out = Driver::Process
            .exec("m", dir.path(), &argv, &[], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout.len(), EXEC_OUTPUT_MAX);
        assert_eq!(out.stderr, b"done\n");
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let script = dir.path().join("forks");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\n",
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let argv = vec!["forks".to_owned()];
        let err = Driver::Process
            .exec("m", dir.path(), &argv, &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone too (or a zombie awaiting its reaper).
        let gone = (0..100).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat"));
            let dead = state.map_or(true, |s| s.contains(") Z") || s.contains(") X"));
            if !dead {
                std::thread::sleep(Duration::from_millis(20));
            }
            dead
        });
        assert!(gone, "sleep {child} outlived the exec's timeout");
    }
}
