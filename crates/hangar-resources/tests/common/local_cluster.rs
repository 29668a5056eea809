//! What a test of Hangar's own Postgres cluster needs: the server
//! binaries, a temporary dir the cluster's user can reach, and a guard
//! that stops a cluster a failed test left running. (The same fixtures as
//! `tests/local_pg.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use hangar_resources::local_pg::PostgresBinaries;

pub fn binaries() -> PostgresBinaries {
    match PostgresBinaries::find() {
        Some(b) => b,
        None => panic!(
            "this test needs the PostgreSQL server binaries (initdb, pg_ctl, postgres) \
             on $PATH or in /usr/lib/postgresql/<N>/bin; none were found"
        ),
    }
}

/// A temporary dir the Postgres user can reach (a root test's tempdir is
/// 0700 root).
pub fn reachable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Stops a cluster a failed test left running (SIGQUIT: immediate).
pub struct KillOnDrop(pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid_file = self.0.join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
    }
}
