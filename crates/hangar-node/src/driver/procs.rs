//! Signals to a machine's main process, and the list of its processes
//! (the Machines API's `/signal` and `/ps`).

use super::{Driver, DriverError, runc_cmd, signal_group};

/// One process of a machine, read from `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    /// Host pid.
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub command: String,
    /// Its working directory as it sees it.
    pub directory: String,
    /// CPU time used (user + system), in milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, in bytes.
    pub rss: u64,
    /// Start time, in milliseconds after the host booted.
    pub start_ms: u64,
}

impl Driver {
    /// Sends `signal` to the machine's main process.
    pub async fn signal(&self, id: &str, pid: Option<u32>, signal: i32) -> Result<(), DriverError> {
        match self {
            Driver::Runc { runc, state_root } => {
                let out = runc_cmd(runc, state_root, &["kill", id, &signal.to_string()]).await?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(DriverError::Runc {
                        action: "kill".into(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    })
                }
            }
            Driver::Process => {
                if let Some(pid) = pid {
                    signal_group(pid, signal);
                }
                Ok(())
            }
        }
    }

    /// The machine's processes (host pids), main process first.
    pub async fn pids(&self, id: &str, pid: Option<u32>) -> Result<Vec<u32>, DriverError> {
        match self {
            Driver::Runc { runc, state_root } => {
                let out = runc_cmd(runc, state_root, &["ps", "--format", "json", id]).await?;
                if !out.status.success() {
                    return Err(DriverError::Runc {
                        action: "ps".into(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    });
                }
                let mut pids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                pids.sort_unstable();
                if let Some(main) = pid
                    && let Some(at) = pids.iter().position(|p| *p == main)
                {
                    pids.remove(at);
                    pids.insert(0, main);
                }
                Ok(pids)
            }
            // The process driver starts each machine in a process group of
            // its own, led by its main process.
            Driver::Process => Ok(pid.map(group_of).unwrap_or_default()),
        }
    }
}

/// The pids of process group `pgid`, its leader first.
fn group_of(pgid: u32) -> Vec<u32> {
    let mut pids = vec![pgid];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if pid != pgid && stat_fields(pid).and_then(|f| f.get(2).copied()) == Some(u64::from(pgid))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Fields of `/proc/<pid>/stat` after the command name, as numbers (state
/// is 0): index 0 is the state, 1 ppid, 2 pgrp, 11 utime, 12 stime, 19
/// starttime (fields 3, 4, 5… of proc(5) shifted by 3).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: cut at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// What `/proc` says of `pid`; `None` once it is gone.
pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let fields = stat_fields(pid)?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let rss_pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let directory = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        command,
        directory,
        cpu_ms: (at(11) + at(12)) * 1000 / ticks,
        rss: rss_pages * page,
        start_ms: at(19) * 1000 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_back_from_proc() {
        let me = std::process::id();
        let info = proc_info(me).expect("this process is alive");
        assert_eq!(info.pid, me);
        assert!(info.rss > 0);
        assert!(!info.command.is_empty());
        assert!(proc_info(u32::MAX).is_none());
    }
}
