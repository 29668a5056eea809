//! Launching a machine: its image, environment, resources file, GPUs and
//! the driver spec it starts from.

use std::path::PathBuf;

use hangar_core::machine::MachineConfig;
use hangar_core::status::MachineState;
use hangar_image::ImageError;
use hangar_store::{App, Machine};

use super::{Agent, NodeError};
use crate::driver::{Limits, MachineSpec};

impl Agent {
    /// The machine's image: its unpacked root filesystem, its config, and
    /// the environment of a process in it (the image's, then the machine's).
    pub(super) async fn image_of(
        &self,
        m: &Machine,
    ) -> Result<(PathBuf, hangar_image::ImageConfig, Vec<String>), NodeError> {
        let images = self.inner.images.clone();
        let digest = m.image_digest.clone();
        let (rootfs, image) = tokio::task::spawn_blocking(move || {
            Ok::<_, ImageError>((images.rootfs(&digest)?, images.config(&digest)?))
        })
        .await
        .map_err(|e| NodeError::NotFound(format!("image task: {e}")))??;
        let rootfs = match &self.inner.cfg.rootfs_view {
            Some(view) => match rootfs.strip_prefix(self.inner.images.rootfs_root()) {
                Ok(rest) => view.join(rest),
                Err(_) => rootfs,
            },
            None => rootfs,
        };
        let mut env = image.config.env.clone().unwrap_or_default();
        env.extend(m.config.env.iter().map(|(k, v)| format!("{k}={v}")));
        Ok((rootfs, image, env))
    }

    /// Writes the machine's resources file (database credentials and
    /// secrets, unsealed) where only the machine's user can read it, on
    /// tmpfs so it is never at rest on disk; `None` when no resources are
    /// configured on this node.
    pub(super) async fn write_resources(
        &self,
        m: &Machine,
        app_name: &str,
        user: (u32, u32),
    ) -> Result<Option<PathBuf>, NodeError> {
        let Some(resources) = self.inner.resources.get() else {
            return Ok(None);
        };
        let mut content = resources
            .for_machine(&m.app_id)
            .await
            .map_err(|e| NodeError::Resources(e.to_string()))?;
        self.expose_resources(m, app_name, &mut content).await?;
        let json = serde_json::to_vec(&content).unwrap_or_default();
        let dir = self.resources_dir(&m.id);
        tokio::task::spawn_blocking(move || write_resources_file(&dir, &json, user).map(|()| dir))
            .await
            .map_err(|e| NodeError::Resources(e.to_string()))?
            .map(Some)
            .map_err(|e| NodeError::Resources(format!("writing the resources file: {e}")))
    }

    /// The host directory of a machine's resources file.
    pub(super) fn resources_dir(&self, machine_id: &str) -> PathBuf {
        self.inner.cfg.run_dir.join(machine_id)
    }

    /// Removes a machine's resources file (it is written anew at each start).
    pub(super) fn remove_resources(&self, machine_id: &str) {
        let _ = std::fs::remove_dir_all(self.resources_dir(machine_id));
    }

    /// Lets machines receive the resources their app declares and its
    /// secrets (set once, at start).
    pub fn set_resources(&self, resources: hangar_resources::Resources) {
        let _ = self.inner.resources.set(resources);
    }

    /// Starts the machine's process (from created or stopped).
    pub(super) async fn launch(&self, m: &Machine, app: &App) -> Result<Machine, NodeError> {
        let app_name = app.name.as_str();
        let inner = &self.inner;
        let m = &self.with_own_network(m).await?;
        let (rootfs, image, mut env) = self.image_of(m).await?;
        env.extend([
            format!("PORT={}", m.port),
            format!("HANGAR_APP={app_name}"),
            format!("HANGAR_MACHINE_ID={}", m.id),
            format!("FLY_MACHINE_ID={}", m.id),
            format!("FLY_APP_NAME={app_name}"),
            format!("FLY_REGION={}", m.region),
            format!("FLY_PRIVATE_IP={}", m.address),
        ]);
        if hangar_resources::shuttle::is_shuttle_image(&env)
            && let Some(resources) = inner.resources.get()
        {
            let mut shuttle = resources
                .shuttle_env(&m.app_id, m.port)
                .await
                .map_err(|e| NodeError::Resources(e.to_string()))?;
            self.expose_platform_api(m, &mut shuttle).await?;
            env.extend(shuttle);
        }
        let guest = m.config.guest();
        let argv = m.config.argv(
            image.config.entrypoint.as_deref().unwrap_or_default(),
            image.config.cmd.as_deref().unwrap_or_default(),
        );
        let gpus = self.take_gpus(&m.id, guest.gpus)?;
        if !gpus.is_empty() {
            let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
            env.push(format!("NVIDIA_VISIBLE_DEVICES={}", list.join(",")));
        }
        // Fly's processes[].user first, then the image's `User`.
        let process_user = m.config.processes.first().and_then(|p| p.user.clone());
        let user = parse_user(process_user.as_deref().or(image.config.user.as_deref()));
        // Its org's range of host uids (runc): uid 0 inside is not root.
        let uid_base = self.uid_base(&app.org_id).await?;
        let host_user = match uid_base {
            Some(base) => (base + user.0, base + user.1),
            None => user,
        };
        let resources = self.write_resources(m, app_name, host_user).await?;
        let spec = MachineSpec {
            id: m.id.clone(),
            hostname: app_name.to_owned(),
            rootfs,
            dir: inner.cfg.machines_dir.join(&m.id),
            argv,
            env,
            cwd: image
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".into()),
            user,
            log: self.log_path(app_name, &m.id),
            limits: Limits {
                memory_mb: guest.memory_mb,
                cpus: f64::from(guest.cpus),
                pids: inner.cfg.limits.pids,
            },
            gpus,
            resources,
            net: self.link_of(m),
            uid_base,
        };
        inner
            .store
            .set_machine_state(&m.id, MachineState::Starting, None, None)
            .await?;
        let pid = match inner.driver.start(&spec).await {
            Ok(pid) => pid,
            Err(e) => {
                self.release_gpus(&m.id);
                inner
                    .store
                    .set_machine_state(&m.id, MachineState::Failed, None, None)
                    .await?;
                return Err(e.into());
            }
        };
        inner
            .store
            .set_machine_state(&m.id, MachineState::Started, Some(i64::from(pid)), None)
            .await?;
        let m = Machine {
            state: MachineState::Started,
            pid: Some(i64::from(pid)),
            exit_code: None,
            oom_killed: false,
            ..m.clone()
        };
        self.spawn_monitor(m.clone(), pid);
        Ok(m)
    }

    /// Refuses a config asking for more GPUs than this node has.
    pub(super) fn check_gpus(&self, config: &MachineConfig) -> Result<(), NodeError> {
        let wanted = config.guest().gpus;
        if wanted > self.inner.gpus {
            return Err(NodeError::NoGpu {
                wanted,
                available: self.inner.gpus,
            });
        }
        Ok(())
    }

    /// Reserves `n` free GPU indexes for a machine (none when `n` is 0).
    pub(super) fn take_gpus(&self, machine: &str, n: u32) -> Result<Vec<u32>, NodeError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut holders = self
            .inner
            .gpu_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        holders.remove(machine);
        let busy: Vec<u32> = holders.values().flatten().copied().collect();
        let free: Vec<u32> = (0..self.inner.gpus).filter(|i| !busy.contains(i)).collect();
        if free.len() < n as usize {
            return Err(NodeError::NoGpu {
                wanted: n,
                available: free.len() as u32,
            });
        }
        let taken = free[..n as usize].to_vec();
        holders.insert(machine.to_owned(), taken.clone());
        Ok(taken)
    }

    pub(super) fn release_gpus(&self, machine: &str) {
        self.inner
            .gpu_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(machine);
    }
}

/// uid:gid from an image's `User` (numeric, or `root`); `nobody`
/// otherwise. Inside a machine's user namespace; at most 65535.
fn parse_user(user: Option<&str>) -> (u32, u32) {
    let nobody = (65534, 65534);
    let Some(user) = user else { return nobody };
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    let id = |s: &str| -> Option<u32> {
        match s {
            "root" => Some(0),
            s => s.parse().ok().filter(|n| *n < USERNS_SIZE),
        }
    };
    match (id(u), id(g)) {
        (Some(u), Some(g)) => (u, g),
        _ => nobody,
    }
}

/// Host uids a machine's user namespace maps (its uids 0..65535).
pub(super) const USERNS_SIZE: u32 = 65_536;
/// The first host uid of org range 0; range `r` starts at
/// `USERNS_FIRST + r × USERNS_SIZE`.
pub(super) const USERNS_FIRST: u32 = 1_000_000;
/// Org ranges that fit below 2³²: past it, machines cannot start.
pub(super) const USERNS_RANGES: i64 = ((u32::MAX - USERNS_FIRST) / USERNS_SIZE) as i64;

impl Agent {
    /// The first host uid of an org's machines (runc only).
    pub(super) async fn uid_base(&self, org_id: &str) -> Result<Option<u32>, NodeError> {
        if !matches!(self.inner.driver, crate::Driver::Runc { .. }) {
            return Ok(None);
        }
        let range = self.inner.store.org_uid_range(org_id).await?;
        if !(0..USERNS_RANGES).contains(&range) {
            return Err(NodeError::Resources(format!(
                "no host uid range left for this organisation (range {range})"
            )));
        }
        Ok(Some(USERNS_FIRST + range as u32 * USERNS_SIZE))
    }
}

/// Writes `dir/resources.json` readable only by `user` (the directory is
/// traversable so a runc machine can reach the file through its bind mount;
/// its parent is private to root).
fn write_resources_file(
    dir: &std::path::Path,
    bytes: &[u8],
    user: (u32, u32),
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    hangar_resources::write_private_file(
        &dir.join(crate::driver::RESOURCES_FILE),
        bytes,
        0o400,
        Some(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn users_parse_numerically() {
        assert_eq!(parse_user(Some("1000:1001")), (1000, 1001));
        assert_eq!(parse_user(Some("0")), (0, 0));
        assert_eq!(parse_user(Some("www-data")), (65534, 65534));
        assert_eq!(parse_user(None), (65534, 65534));
    }
}
