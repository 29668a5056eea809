//! Signals and process lists of running machines.

use hangar_core::status::MachineState;
use hangar_store::Machine;

use super::{Agent, NodeError};
use crate::driver::{self, ProcInfo};

impl Agent {
    /// The machine `id`, which must be running for `action`.
    async fn running(&self, id: &str, action: &'static str) -> Result<Machine, NodeError> {
        let (m, _) = self.load(id).await?;
        if m.state != MachineState::Started {
            return Err(NodeError::InvalidState {
                id: m.id,
                state: m.state,
                action,
                hint: "; start it first",
            });
        }
        Ok(m)
    }

    /// Sends `signal` to the machine's main process (which may exit: its
    /// restart policy then applies as for any exit).
    pub async fn signal(&self, id: &str, signal: i32) -> Result<(), NodeError> {
        let m = self.running(id, "signal").await?;
        let pid = m.pid.and_then(|p| u32::try_from(p).ok());
        Ok(self.inner.driver.signal(&m.id, pid, signal).await?)
    }

    /// The machine's processes as `/proc` shows them, main process first.
    pub async fn processes(&self, id: &str) -> Result<Vec<ProcInfo>, NodeError> {
        let m = self.running(id, "list the processes of").await?;
        let pid = m.pid.and_then(|p| u32::try_from(p).ok());
        let pids = self.inner.driver.pids(&m.id, pid).await?;
        Ok(tokio::task::spawn_blocking(move || {
            pids.into_iter().filter_map(driver::proc_info).collect()
        })
        .await
        .unwrap_or_default())
    }
}
