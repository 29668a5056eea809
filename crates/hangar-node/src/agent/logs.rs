//! Keeping machine logs under a per-app cap and a per-machine rate.
//!
//! A runc machine writes its stdout and stderr straight into
//! `logs/<app>/<machine>.log` (opened `O_APPEND` and handed to runc), so
//! its logs outlive hangar and no relay sits in its way. Every second the
//! keeper looks at each app's directory:
//! - **Rate**: a live log that grew by more than a second's worth of the
//!   rate since the last pass is cut back to that, with a note saying how
//!   much was dropped ([`hangar_core::log_rate`]): what an app may keep is
//!   bounded per second, whatever it prints (the rest of that second's
//!   output is lost, as journald's rate limit loses it).
//! - **Cap**: past the app's cap it drops the oldest rotated (`.log.1`)
//!   files and logs of machines that are gone, then cuts the largest log
//!   still written to: its last quarter of the cap is copied to
//!   `<machine>.log.1` and the file is truncated to zero, where the
//!   machine's next write lands (copy-truncate). Between two passes an app
//!   may exceed its cap by what it writes in a second.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use super::Agent;

/// How often the keeper looks.
const PASS: Duration = Duration::from_secs(1);

/// The keeper's limits.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// All of one app's log files together, in bytes.
    pub cap: u64,
    /// Bytes one machine's log may grow by in a second.
    pub rate: u64,
}

/// The length each live log had after the keeper's last pass.
type Seen = HashMap<PathBuf, u64>;

impl Agent {
    /// Runs the keeper until `shutdown` (no limits: no keeper).
    pub fn spawn_log_keeper(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(limits) = self.inner.cfg.log_limits else {
            return;
        };
        let dir = self.inner.cfg.logs_dir.clone();
        tokio::spawn(async move {
            let mut seen = Seen::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PASS) => {}
                    _ = shutdown.changed() => return,
                }
                let dir = dir.clone();
                let pass = tokio::task::spawn_blocking(move || keep_all(&dir, limits, seen)).await;
                match pass {
                    Ok(s) => seen = s,
                    Err(e) => {
                        warn!("log keeper: {e}");
                        seen = Seen::new();
                    }
                }
            }
        });
    }
}

fn keep_all(logs_dir: &Path, limits: LogLimits, seen: Seen) -> Seen {
    let mut next = Seen::new();
    let Ok(apps) = fs::read_dir(logs_dir) else {
        return next;
    };
    for app in apps.flatten() {
        if app.file_type().is_ok_and(|t| t.is_dir()) {
            let dir = app.path();
            // The directory is listed once a pass, and again only after
            // a cut changed what it holds.
            let Ok(mut all) = files(&dir) else { continue };
            match limit_rate(&all, limits.rate, &seen) {
                Ok(0) => {}
                Ok(_) => match files(&dir) {
                    Ok(now) => all = now,
                    Err(_) => continue,
                },
                Err(e) => warn!(dir = %dir.display(), "keeping logs under their rate: {e}"),
            }
            match keep_listed(all.clone(), limits.cap) {
                Ok(false) => {}
                Ok(true) => match files(&dir) {
                    Ok(now) => all = now,
                    Err(_) => continue,
                },
                Err(e) => warn!(dir = %dir.display(), "keeping logs under their cap: {e}"),
            }
            // What each live log holds now is the start of the next
            // second's growth.
            for (path, len, _) in all {
                if !is_rotated(&path) {
                    next.insert(path, len);
                }
            }
        }
    }
    next
}

/// Cuts each live log of a directory's listing `all` that grew by more
/// than `rate` bytes since `seen` back to that (see
/// [`hangar_core::log_rate::cut_to_rate`]); returns how many it cut. A log
/// not in `seen` (new, or after a restart) is measured from the next pass
/// on.
fn limit_rate(all: &[Listed], rate: u64, seen: &Seen) -> std::io::Result<usize> {
    let mut cut = 0;
    for (path, len, _) in all {
        let Some(&before) = seen.get(path) else {
            continue;
        };
        // Within its rate as listed: no need to open it.
        if is_rotated(path) || (*len >= before && len - before <= rate) {
            continue;
        }
        if let Some(dropped) = hangar_core::log_rate::cut_to_rate(path, before, rate)? {
            info!(log = %path.display(), dropped, "log over its rate: cut");
            cut += 1;
        }
    }
    Ok(cut)
}

/// A log file of an app's directory: path, length, last write.
type Listed = (PathBuf, u64, std::time::SystemTime);

/// One app's logs: what is in its directory, oldest first.
fn files(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_file() {
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            out.push((e.path(), meta.len(), mtime));
        }
    }
    out.sort_by_key(|f| f.2);
    Ok(out)
}

/// Brings the logs in `dir` under `cap` bytes (see the module's doc).
#[cfg(test)]
fn keep_under(dir: &Path, cap: u64) -> std::io::Result<()> {
    keep_listed(files(dir)?, cap).map(|_| ())
}

/// Brings the logs of a directory's listing `all` under `cap` bytes;
/// true if it removed or cut a file.
fn keep_listed(mut all: Vec<Listed>, cap: u64) -> std::io::Result<bool> {
    let mut total: u64 = all.iter().map(|f| f.1).sum();
    if total <= cap {
        return Ok(false);
    }
    // A log not written for a minute is of a machine that stopped or is
    // gone: rotated files and those go first, oldest first.
    let quiet = std::time::SystemTime::now() - Duration::from_secs(60);
    all.retain(|(path, len, mtime)| {
        if total > cap && (is_rotated(path) || *mtime < quiet) && fs::remove_file(path).is_ok() {
            total -= len;
            return false;
        }
        true
    });
    if total <= cap {
        return Ok(true);
    }
    // Then the largest live log is cut, keeping its tail.
    if let Some((path, len, _)) = all
        .iter()
        .filter(|f| !is_rotated(&f.0))
        .max_by_key(|f| f.1)
        .cloned()
    {
        let keep = (cap / 4).min(len);
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&path)?;
        f.seek(SeekFrom::Start(len - keep))?;
        let mut tail = Vec::with_capacity(keep as usize);
        (&mut f).take(keep).read_to_end(&mut tail)?;
        let tmp = PathBuf::from(format!("{}.tmp", rotated.display()));
        let mut out = fs::File::create(&tmp)?;
        out.write_all(&tail)?;
        fs::rename(&tmp, &rotated)?;
        f.set_len(0)?;
        info!(log = %path.display(), bytes = len, "log over its app's cap: cut, its tail kept in .1");
    }
    Ok(true)
}

fn is_rotated(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_kept_under_the_cap_with_their_tail() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("mch_a.log");
        let mut text = Vec::new();
        for i in 0..20_000 {
            text.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        fs::write(&live, &text).unwrap();
        let cap = 40_000;
        keep_under(dir.path(), cap).unwrap();
        let now: u64 = files(dir.path()).unwrap().iter().map(|f| f.1).sum();
        assert!(now <= cap, "{now} bytes left");
        assert_eq!(fs::metadata(&live).unwrap().len(), 0);
        let kept = fs::read_to_string(dir.path().join("mch_a.log.1")).unwrap();
        assert!(kept.ends_with("line 19999\n"), "the newest lines are kept");
        // An appending writer goes on at the start of the cut file.
        let mut w = fs::OpenOptions::new().append(true).open(&live).unwrap();
        w.write_all(b"after\n").unwrap();
        assert_eq!(fs::read(&live).unwrap(), b"after\n");
        // Under the cap: nothing changes.
        keep_under(dir.path(), cap).unwrap();
        assert!(dir.path().join("mch_a.log.1").exists());
    }

    #[test]
    fn only_logs_seen_before_and_past_their_rate_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (loud, quiet, new) = (
            dir.path().join("mch_a.log"),
            dir.path().join("mch_b.log"),
            dir.path().join("mch_c.log"),
        );
        for p in [&loud, &quiet, &new] {
            fs::write(p, "x\n".repeat(1000)).unwrap();
        }
        let seen: Seen = [(loud.clone(), 0), (quiet.clone(), 1990)].into();
        limit_rate(&files(dir.path()).unwrap(), 100, &seen).unwrap();
        let lines = |p: &Path| fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&loud), 51, "50 lines and the note");
        assert_eq!(lines(&quiet), 1000);
        assert_eq!(
            lines(&new),
            1000,
            "a log not seen before is measured from now on"
        );
    }
}
