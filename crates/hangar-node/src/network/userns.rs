//! A machine's user and network namespaces, made as a pair ahead of its
//! first start.
//!
//! A machine runs in a user namespace of its own (its uids 0..65535 are its
//! org's range of host uids). Its network namespace must be owned by that
//! user namespace: the kernel lets a process in the user namespace mount
//! sysfs and `runc exec` join the network namespace only then. So both are
//! made together, with the standard tools: `unshare --user --net` starts a
//! placeholder process in two new namespaces, the uid and gid maps are
//! written from the host (as `newuidmap` would), and `mount --bind` keeps
//! each namespace alive at a path (`/run/netns/<name>`, where `ip -n`
//! finds it, and [`USERNS_DIR`]`/<name>`, which the OCI spec names) after
//! the placeholder is gone. Removing a machine unmounts both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{NETNS_DIR, NetworkError};

/// Where the machines' user namespaces are kept (on tmpfs, like netns).
pub const USERNS_DIR: &str = "/run/hangar-userns";

/// The path a machine's user namespace is kept at.
pub fn userns_path(name: &str) -> PathBuf {
    Path::new(USERNS_DIR).join(name)
}

/// Makes the pair: a user namespace mapping `size` uids and gids from host
/// uid `base` onto 0.., and a network namespace it owns, kept at
/// `/run/netns/<name>` and `USERNS_DIR/<name>`.
pub async fn make_pair(name: &str, base: u32, size: u32) -> Result<(), NetworkError> {
    let io = |what: String| move |source| NetworkError::Io { what, source };
    for dir in [NETNS_DIR, USERNS_DIR] {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {dir}")))?;
    }
    let mut child = Command::new("unshare")
        .args(["--user", "--net", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetworkError::Tool {
            tool: "unshare",
            source,
        })?;
    let pid = child.id().ok_or_else(|| NetworkError::Command {
        command: "unshare --user --net".into(),
        stderr: "exited at once".into(),
    })?;
    let result = async {
        // Until unshare(2) has run, the child is still in our namespaces.
        let ours = std::fs::read_link("/proc/self/ns/user").ok();
        let mut moved = false;
        for _ in 0..500 {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
            if theirs.is_some() && theirs != ours {
                moved = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !moved {
            return Err(NetworkError::Command {
                command: "unshare --user --net".into(),
                stderr: "the new namespaces did not appear within 1 s".into(),
            });
        }
        let map = format!("0 {base} {size}\n");
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::write(&path, &map).map_err(io(format!("writing {path}")))?;
        }
        for (kind, dir) in [("net", NETNS_DIR), ("user", USERNS_DIR)] {
            let target = Path::new(dir).join(name);
            std::fs::write(&target, b"").map_err(io(format!("creating {}", target.display())))?;
            let source = format!("/proc/{pid}/ns/{kind}");
            run("mount", &["--bind", &source, &target.to_string_lossy()]).await?;
        }
        Ok(())
    }
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// Unmounts and removes the pair (best effort: what is gone is fine).
pub async fn remove_pair(name: &str) {
    for dir in [NETNS_DIR, USERNS_DIR] {
        let target = Path::new(dir).join(name);
        if target.exists() {
            let _ = run("umount", &["--lazy", &target.to_string_lossy()]).await;
            let _ = std::fs::remove_file(&target);
        }
    }
}

async fn run(tool: &'static str, args: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| NetworkError::Tool { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
