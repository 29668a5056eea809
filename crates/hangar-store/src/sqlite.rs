//! SQLite implementation of the state store. The build queue's methods
//! live in [`builds`].

mod access;
mod builds;
mod certs;
mod domains;
mod git;
mod previews;

pub use git::{MAX_GIT_HISTORY, NewDelivery};
pub use previews::{MAX_PREVIEWS_PER_APP, PreviewPush};

use std::path::Path;
use std::sync::{Arc, Mutex};

use hangar_core::id::new_id;
use hangar_core::now_unix;
use hangar_core::status::{BuildStatus, MachineState, ReleaseStatus};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{
    App, Build, Lease, Machine, MachineEvent, NewMachine, Release, ResourceRow, Result, StoreError,
};

/// Migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema2.sql"),
    include_str!("schema3.sql"),
    include_str!("schema4.sql"),
    include_str!("schema5.sql"),
    include_str!("schema6.sql"),
    include_str!("schema7.sql"),
    include_str!("schema8.sql"),
    include_str!("schema9.sql"),
    include_str!("schema10.sql"),
    include_str!("schema11.sql"),
    include_str!("schema12.sql"),
];

/// Handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// One connection serialised by a mutex: SQLite has one writer anyway, and
    /// every method is a short transaction.
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk when it returns (NORMAL in WAL mode may
        // lose the last commits on power loss, though never corrupts).
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::init(conn)
    }

    /// A private in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent
            // (the transaction rolls back), so a poisoned lock is still usable.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    // ---- apps ----

    /// The app with this name, whichever org owns it.
    pub async fn app_by_name(&self, name: &str) -> Result<Option<App>> {
        let name = name.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {APP_COLS} FROM apps WHERE name = ?1"),
                [name],
                app_row,
            )
            .optional()?)
        })
        .await
    }

    /// The app by id.
    pub async fn app(&self, id: &str) -> Result<Option<App>> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {APP_COLS} FROM apps WHERE id = ?1"),
                [id],
                app_row,
            )
            .optional()?)
        })
        .await
    }

    /// The org's app named `name`, created if no app has that name yet.
    pub async fn get_or_create_app(&self, org_id: &str, name: &str) -> Result<App> {
        let (org_id, name) = (org_id.to_owned(), name.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let existing = tx
                .query_row(
                    &format!("SELECT {APP_COLS} FROM apps WHERE name = ?1"),
                    [&name],
                    app_row,
                )
                .optional()?;
            let app = match existing {
                Some(app) if app.org_id == org_id => app,
                Some(_) => return Err(StoreError::NameTaken(name)),
                None => {
                    let app = App {
                        id: new_id("app"),
                        org_id,
                        name,
                        created_at: now_unix(),
                        scale: None,
                    };
                    tx.execute(
                        "INSERT INTO apps (id, org_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![app.id, app.org_id, app.name, app.created_at],
                    )?;
                    app
                }
            };
            tx.commit()?;
            Ok(app)
        })
        .await
    }

    /// The org's apps, by name.
    pub async fn apps(&self, org_id: &str) -> Result<Vec<App>> {
        let org_id = org_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {APP_COLS} FROM apps WHERE org_id = ?1 ORDER BY name"
            ))?;
            let rows = st.query_map([org_id], app_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Every app on the platform (for the node's reconcile at start).
    pub async fn all_apps(&self) -> Result<Vec<App>> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {APP_COLS} FROM apps ORDER BY name"))?;
            let rows = st.query_map([], app_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Deletes the app and, by cascade, its builds, releases and machine rows.
    pub async fn delete_app(&self, app_id: &str) -> Result<()> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM apps WHERE id = ?1", [app_id])?;
            Ok(())
        })
        .await
    }

    // ---- secrets and resources (values sealed by hangar-resources) ----

    /// Sets (inserts or replaces) sealed secrets of an app, in one transaction.
    pub async fn set_secrets(&self, app_id: &str, sealed: Vec<(String, Vec<u8>)>) -> Result<()> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            for (name, value) in sealed {
                tx.execute(
                    "INSERT INTO secrets (app_id, name, sealed, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (app_id, name) DO UPDATE SET sealed = ?3, updated_at = ?4",
                    params![app_id, name, value, now_unix()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Removes secrets by name; returns the names that existed.
    pub async fn unset_secrets(&self, app_id: &str, names: Vec<String>) -> Result<Vec<String>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut removed = Vec::new();
            for name in names {
                if tx.execute(
                    "DELETE FROM secrets WHERE app_id = ?1 AND name = ?2",
                    params![app_id, name],
                )? > 0
                {
                    removed.push(name);
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// How many rows hold values sealed by the vault (secrets, resource
    /// credentials, certificate keys, ACME accounts): without its key they
    /// cannot be read.
    pub async fn sealed_rows(&self) -> Result<i64> {
        self.call(|c| {
            Ok(c.query_row(
                "SELECT (SELECT COUNT(*) FROM secrets) \
                 + (SELECT COUNT(*) FROM resources WHERE sealed IS NOT NULL) \
                 + (SELECT COUNT(*) FROM certificates WHERE key_sealed IS NOT NULL) \
                 + (SELECT COUNT(*) FROM acme_accounts) \
                 + (SELECT COUNT(*) FROM git_connections)",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// An app's secrets: (name, sealed value, updated_at), by name.
    pub async fn secrets(&self, app_id: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT name, sealed, updated_at FROM secrets WHERE app_id = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([app_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            collect(rows)
        })
        .await
    }

    /// Records a resource's state (inserting it on first use).
    pub async fn put_resource(&self, r: ResourceRow) -> Result<()> {
        self.call(move |c| {
            let now = now_unix();
            c.execute(
                "INSERT INTO resources (app_id, kind, name, status, detail, sealed, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (app_id, kind) DO UPDATE SET name = ?3, status = ?4, detail = ?5,
                     sealed = COALESCE(?6, sealed), updated_at = ?7",
                params![r.app_id, r.kind, r.name, r.status, r.detail, r.sealed, now],
            )?;
            Ok(())
        })
        .await
    }

    /// An app's resources, by kind.
    pub async fn resources(&self, app_id: &str) -> Result<Vec<ResourceRow>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT app_id, kind, name, status, detail, sealed, updated_at
                 FROM resources WHERE app_id = ?1 ORDER BY kind",
            )?;
            let rows = stmt.query_map([app_id], |r| {
                Ok(ResourceRow {
                    app_id: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    status: r.get(3)?,
                    detail: r.get(4)?,
                    sealed: r.get(5)?,
                    updated_at: r.get(6)?,
                })
            })?;
            collect(rows)
        })
        .await
    }

    /// Forgets one resource of an app.
    pub async fn delete_resource(&self, app_id: &str, kind: &str) -> Result<()> {
        let (app_id, kind) = (app_id.to_owned(), kind.to_owned());
        self.call(move |c| {
            c.execute(
                "DELETE FROM resources WHERE app_id = ?1 AND kind = ?2",
                params![app_id, kind],
            )?;
            Ok(())
        })
        .await
    }

    // ---- releases ----

    /// The release by id.
    pub async fn release(&self, id: &str) -> Result<Option<Release>> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE id = ?1"),
                [id],
                release_row,
            )
            .optional()?)
        })
        .await
    }

    /// The release a build produced, if any.
    pub async fn release_for_build(&self, build_id: &str) -> Result<Option<Release>> {
        let build_id = build_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE build_id = ?1"),
                [build_id],
                release_row,
            )
            .optional()?)
        })
        .await
    }

    /// The app's releases, newest first.
    pub async fn releases_for_app(&self, app_id: &str) -> Result<Vec<Release>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {RELEASE_COLS} FROM releases WHERE app_id = ?1 ORDER BY version DESC"
            ))?;
            let rows = st.query_map([app_id], release_row)?;
            collect(rows)
        })
        .await
    }

    /// Releases whose rollout has not finished (after a crash, to resume).
    pub async fn unfinished_releases(&self) -> Result<Vec<Release>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {RELEASE_COLS} FROM releases WHERE status IN ('pending', 'deploying')
                 ORDER BY created_at, version"
            ))?;
            let rows = st.query_map([], release_row)?;
            collect(rows)
        })
        .await
    }

    /// Sets a release's status (and the reason, for failures).
    pub async fn set_release_status(
        &self,
        id: &str,
        status: ReleaseStatus,
        error: Option<&str>,
    ) -> Result<()> {
        let (id, error) = (id.to_owned(), error.map(str::to_owned));
        self.call(move |c| {
            c.execute(
                "UPDATE releases SET status = ?2, error = ?3 WHERE id = ?1",
                params![id, status.as_str(), error],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes `release_id` the app's active release; the previous one becomes
    /// superseded, in the same transaction.
    pub async fn activate_release(&self, app_id: &str, release_id: &str) -> Result<()> {
        let (app_id, release_id) = (app_id.to_owned(), release_id.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE releases SET status = 'superseded' WHERE app_id = ?1 AND status = 'active'",
                [&app_id],
            )?;
            tx.execute(
                "UPDATE releases SET status = 'active', error = NULL WHERE id = ?1",
                [&release_id],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A new pending release (the next version) with the image and config
    /// of release `from`: a rollback, which needs no build.
    pub async fn rollback_release(&self, from: &Release) -> Result<Release> {
        let from = from.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            let release = insert_release(
                &tx,
                from.app_id,
                from.build_id,
                from.image_digest,
                from.config,
                format!("rollback to v{}", from.version),
            )?;
            tx.commit()?;
            Ok(release)
        })
        .await
    }

    /// Sets (or with None clears) the app's machine count.
    pub async fn set_app_scale(&self, app_id: &str, scale: Option<i64>) -> Result<()> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE apps SET scale = ?2 WHERE id = ?1",
                params![app_id, scale],
            )?;
            Ok(())
        })
        .await
    }

    /// The org's range of host uids (0, 1, 2, …: the caller turns it into
    /// uids), allocated on first use. Stable for the org's life.
    pub async fn org_uid_range(&self, org_id: &str) -> Result<i64> {
        let org_id = org_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            let existing: Option<Option<i64>> = tx
                .query_row(
                    "SELECT uid_range FROM orgs WHERE id = ?1",
                    params![org_id],
                    |r| r.get(0),
                )
                .optional()?;
            let range = match existing {
                None => return Err(StoreError::Corrupt(format!("no org {org_id}"))),
                Some(Some(r)) => r,
                Some(None) => {
                    let next: i64 = tx.query_row(
                        "SELECT COALESCE(MAX(uid_range) + 1, 0) FROM orgs",
                        [],
                        |r| r.get(0),
                    )?;
                    tx.execute(
                        "UPDATE orgs SET uid_range = ?2 WHERE id = ?1",
                        params![org_id, next],
                    )?;
                    next
                }
            };
            tx.commit()?;
            Ok(range)
        })
        .await
    }

    // ---- machines ----

    /// Records a new machine in state `created`.
    pub async fn create_machine(&self, new: NewMachine) -> Result<Machine> {
        let now = now_unix();
        let id = new_id("mch");
        let m = Machine {
            name: new.name.unwrap_or_else(|| id.clone()),
            id,
            app_id: new.app_id,
            release_id: new.release_id,
            region: new.region,
            instance_id: new_instance_id(),
            config: new.config,
            image_digest: new.image_digest,
            state: MachineState::Created,
            driver: new.driver,
            port: i64::from(new.port),
            address: new.address,
            pid: None,
            exit_code: None,
            oom_killed: false,
            restarts: 0,
            cordoned: false,
            lease: None,
            created_at: now,
            updated_at: now,
        };
        let row = m.clone();
        let config = serde_json::to_string(&row.config)
            .map_err(|e| StoreError::Corrupt(format!("machine config: {e}")))?;
        self.call(move |c| {
            c.execute(
                "INSERT INTO machines (id, app_id, release_id, name, region, instance_id, config,
                     image_digest, state, driver, port, created_at, updated_at, address)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'created', ?9, ?10, ?11, ?11, ?12)",
                params![
                    row.id,
                    row.app_id,
                    row.release_id,
                    row.name,
                    row.region,
                    row.instance_id,
                    config,
                    row.image_digest,
                    row.driver,
                    row.port,
                    row.created_at,
                    row.address.to_string()
                ],
            )?;
            insert_event(c, &row.id, "launch", "created", "user")?;
            Ok(())
        })
        .await?;
        Ok(m)
    }

    /// Records a machine's new state, pid and exit code, and an event.
    pub async fn set_machine_state(
        &self,
        id: &str,
        state: MachineState,
        pid: Option<i64>,
        exit_code: Option<i64>,
    ) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET state = ?2, pid = ?3, exit_code = ?4, updated_at = ?5
                 WHERE id = ?1",
                params![id, state.as_str(), pid, exit_code, now_unix()],
            )?;
            insert_event(c, &id, event_type(state), state.as_str(), "hangar")?;
            Ok(())
        })
        .await
    }

    /// Records that a machine's process exited on its own.
    pub async fn record_exit(
        &self,
        id: &str,
        exit_code: Option<i64>,
        oom_killed: bool,
    ) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET state = 'stopped', pid = NULL, exit_code = ?2,
                 oom_killed = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, exit_code, oom_killed, now_unix()],
            )?;
            insert_event(c, &id, "exit", "stopped", "hangar")?;
            c.execute(
                "UPDATE machine_events SET exit_code = ?2, oom_killed = ?3
                 WHERE seq = last_insert_rowid() AND machine_id = ?1",
                params![id, exit_code, oom_killed],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets the count of consecutive restarts done by the restart policy.
    pub async fn set_machine_restarts(&self, id: &str, restarts: i64) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET restarts = ?2 WHERE id = ?1",
                params![id, restarts],
            )?;
            Ok(())
        })
        .await
    }

    /// The app's machines, newest first; destroyed ones only when asked.
    pub async fn machines_for_app_all(
        &self,
        app_id: &str,
        include_destroyed: bool,
    ) -> Result<Vec<Machine>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {MACHINE_COLS} FROM machines WHERE app_id = ?1
                 AND (?2 OR state != 'destroyed') ORDER BY created_at DESC, rowid DESC"
            ))?;
            let rows = st.query_map(params![app_id, include_destroyed], machine_row)?;
            collect(rows)
        })
        .await
    }

    /// The app's machines that are not destroyed, newest first.
    pub async fn machines_for_app(&self, app_id: &str) -> Result<Vec<Machine>> {
        self.machines_for_app_all(app_id, false).await
    }

    /// Moves a machine to a new address and port (one made before
    /// machines had network namespaces of their own).
    pub async fn set_machine_network(
        &self,
        id: &str,
        address: std::net::IpAddr,
        port: u16,
    ) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET address = ?2, port = ?3 WHERE id = ?1",
                params![id, address.to_string(), i64::from(port)],
            )?;
            Ok(())
        })
        .await
    }

    /// Every machine not destroyed, whatever its state: the ones that own
    /// an address and a network namespace.
    pub async fn undestroyed_machines(&self) -> Result<Vec<Machine>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {MACHINE_COLS} FROM machines WHERE state != 'destroyed'"
            ))?;
            let rows = st.query_map([], machine_row)?;
            collect(rows)
        })
        .await
    }

    /// Every machine whose process should exist (to re-adopt after a restart).
    pub async fn live_machines(&self) -> Result<Vec<Machine>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {MACHINE_COLS} FROM machines WHERE state IN
                 ('starting', 'started', 'stopping', 'suspending', 'suspended', 'destroying')"
            ))?;
            let rows = st.query_map([], machine_row)?;
            collect(rows)
        })
        .await
    }

    /// The machine by id.
    pub async fn machine(&self, id: &str) -> Result<Option<Machine>> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {MACHINE_COLS} FROM machines WHERE id = ?1"),
                [id],
                machine_row,
            )
            .optional()?)
        })
        .await
    }

    /// The machine's most recent events, newest first.
    pub async fn machine_events(&self, id: &str, limit: i64) -> Result<Vec<MachineEvent>> {
        self.machine_events_after(id, 0, limit).await
    }

    /// The machine's events newer than event `after` (its `id`), newest
    /// first, at most `limit`.
    pub async fn machine_events_after(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MachineEvent>> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT type, status, source, at_ms, seq, exit_code, oom_killed FROM machine_events
                 WHERE machine_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = st.query_map(params![id, after, limit], |r| {
                Ok(MachineEvent {
                    kind: r.get(0)?,
                    status: r.get(1)?,
                    source: r.get(2)?,
                    timestamp: r.get(3)?,
                    id: r.get(4)?,
                    exit_code: r.get(5)?,
                    oom_killed: r.get::<_, Option<bool>>(6)?,
                })
            })?;
            collect(rows)
        })
        .await
    }

    /// Replaces a machine's config (and image, and optionally name); a new
    /// instance id marks the new version. Returns the updated row.
    pub async fn update_machine_config(
        &self,
        id: &str,
        config: &hangar_core::machine::MachineConfig,
        image_digest: &str,
        name: Option<&str>,
    ) -> Result<Option<Machine>> {
        let config = serde_json::to_string(config)
            .map_err(|e| StoreError::Corrupt(format!("machine config: {e}")))?;
        let (id, image_digest, name) = (
            id.to_owned(),
            image_digest.to_owned(),
            name.map(str::to_owned),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET config = ?2, image_digest = ?3, name = COALESCE(?4, name),
                 instance_id = ?5, updated_at = ?6 WHERE id = ?1",
                params![
                    id,
                    config,
                    image_digest,
                    name,
                    new_instance_id(),
                    now_unix()
                ],
            )?;
            insert_event(c, &id, "update", "updated", "user")?;
            Ok(c.query_row(
                &format!("SELECT {MACHINE_COLS} FROM machines WHERE id = ?1"),
                [&id],
                machine_row,
            )
            .optional()?)
        })
        .await
    }

    /// Replaces a machine's metadata without a new instance id (as Fly does).
    pub async fn set_machine_metadata(
        &self,
        id: &str,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            let config: String =
                tx.query_row("SELECT config FROM machines WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })?;
            let mut config: hangar_core::machine::MachineConfig = serde_json::from_str(&config)
                .map_err(|e| StoreError::Corrupt(format!("machine config: {e}")))?;
            config.metadata = metadata;
            let config = serde_json::to_string(&config)
                .map_err(|e| StoreError::Corrupt(format!("machine config: {e}")))?;
            tx.execute(
                "UPDATE machines SET config = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, config, now_unix()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Cordons (no traffic) or uncordons a machine.
    pub async fn set_machine_cordoned(&self, id: &str, cordoned: bool) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE machines SET cordoned = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, cordoned, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets (or, with None, releases) a machine's lease.
    pub async fn set_machine_lease(&self, id: &str, lease: Option<Lease>) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            let (nonce, owner, description, expires) = match lease {
                Some(l) => (
                    Some(l.nonce),
                    Some(l.owner),
                    Some(l.description),
                    Some(l.expires_at),
                ),
                None => (None, None, None, None),
            };
            c.execute(
                "UPDATE machines SET lease_nonce = ?2, lease_owner = ?3, lease_description = ?4,
                 lease_expires_at = ?5 WHERE id = ?1",
                params![id, nonce, owner, description, expires],
            )?;
            Ok(())
        })
        .await
    }

    // ---- image references ----

    /// Names an image for an org (replacing what the name pointed at).
    pub async fn set_image_ref(&self, org_id: &str, name: &str, digest: &str) -> Result<()> {
        let (org_id, name, digest) = (org_id.to_owned(), name.to_owned(), digest.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO image_refs (org_id, name, digest, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org_id, name) DO UPDATE SET digest = excluded.digest,
                 created_at = excluded.created_at",
                params![org_id, name, digest, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// Resolves an image reference for an org: a name it gave (`name:tag`,
    /// `name` meaning `name:latest`), or a digest it has a name for.
    pub async fn resolve_image(&self, org_id: &str, reference: &str) -> Result<Option<String>> {
        let (org_id, reference) = (org_id.to_owned(), reference.to_owned());
        self.call(move |c| {
            if reference.starts_with("sha256:") {
                return Ok(c
                    .query_row(
                        "SELECT digest FROM image_refs WHERE org_id = ?1 AND digest = ?2 LIMIT 1",
                        params![org_id, reference],
                        |r| r.get(0),
                    )
                    .optional()?);
            }
            let name = if reference.contains(':') {
                reference
            } else {
                format!("{reference}:latest")
            };
            Ok(c.query_row(
                "SELECT digest FROM image_refs WHERE org_id = ?1 AND name = ?2",
                params![org_id, name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}

/// A Fly-style instance id: changes whenever a machine's config changes.
fn new_instance_id() -> String {
    new_id("inst").to_uppercase().replace("INST_", "01")
}

fn event_type(state: MachineState) -> &'static str {
    match state {
        MachineState::Created => "launch",
        MachineState::Starting | MachineState::Started => "start",
        MachineState::Stopping | MachineState::Stopped => "stop",
        MachineState::Suspending | MachineState::Suspended => "suspend",
        MachineState::Destroying | MachineState::Destroyed => "destroy",
        MachineState::Failed => "exit",
    }
}

fn insert_event(
    c: &Connection,
    machine_id: &str,
    kind: &str,
    status: &str,
    source: &str,
) -> Result<()> {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    c.execute(
        "INSERT INTO machine_events (machine_id, type, status, source, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![machine_id, kind, status, source, at_ms],
    )?;
    Ok(())
}

const BUILD_COLS: &str = "id, app_id, status, source_digest, image_digest, error, attempts, \
                          builder_pgid, created_at, started_at, finished_at, git_sha";
const APP_COLS: &str = "id, org_id, name, created_at, scale";
const RELEASE_COLS: &str = "id, app_id, version, build_id, image_digest, status, error, created_at, config, description, \
     git_sha, git_message";
const MACHINE_COLS: &str = "id, app_id, release_id, name, region, instance_id, config, \
    image_digest, state, driver, port, pid, exit_code, oom_killed, restarts, cordoned, lease_nonce, \
    lease_owner, lease_description, lease_expires_at, created_at, updated_at, address";

fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<T>>) -> Result<Vec<T>> {
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Parses a stored state string, turning an unknown one into a column error.
fn state<T: std::str::FromStr>(r: &Row, idx: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = r.get(idx)?;
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn app_row(r: &Row) -> rusqlite::Result<App> {
    Ok(App {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        created_at: r.get(3)?,
        scale: r.get(4)?,
    })
}

fn get_build(c: &Connection, id: &str) -> Result<Option<Build>> {
    Ok(c.query_row(
        &format!("SELECT {BUILD_COLS} FROM builds WHERE id = ?1"),
        [id],
        build_row,
    )
    .optional()?)
}

fn build_row(r: &Row) -> rusqlite::Result<Build> {
    Ok(Build {
        id: r.get(0)?,
        app_id: r.get(1)?,
        status: state::<BuildStatus>(r, 2)?,
        source_digest: r.get(3)?,
        image_digest: r.get(4)?,
        error: r.get(5)?,
        attempts: r.get(6)?,
        builder_pgid: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        git_sha: r.get(11)?,
    })
}

/// Inserts the app's next release, `pending`.
fn insert_release(
    tx: &rusqlite::Transaction,
    app_id: String,
    build_id: String,
    image_digest: String,
    config: Option<String>,
    description: String,
) -> Result<Release> {
    let version: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?1",
        [&app_id],
        |r| r.get(0),
    )?;
    // The commit the build was of, and its message, go with every
    // release of it (a rollback to it included).
    let (git_sha, git_message): (Option<String>, Option<String>) = tx
        .query_row(
            "SELECT b.git_sha, c.message FROM builds b LEFT JOIN git_commits c
             ON c.app_id = b.app_id AND c.sha = b.git_sha WHERE b.id = ?1",
            [&build_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or_default();
    let release = Release {
        id: new_id("rel"),
        app_id,
        version,
        build_id,
        image_digest,
        status: ReleaseStatus::Pending,
        error: None,
        created_at: now_unix(),
        config,
        description,
        git_sha,
        git_message,
    };
    tx.execute(
        "INSERT INTO releases (id, app_id, version, build_id, image_digest, status, created_at,
         config, description, git_sha, git_message)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?9, ?10)",
        params![
            release.id,
            release.app_id,
            release.version,
            release.build_id,
            release.image_digest,
            release.created_at,
            release.config,
            release.description,
            release.git_sha,
            release.git_message
        ],
    )?;
    Ok(release)
}

fn release_row(r: &Row) -> rusqlite::Result<Release> {
    Ok(Release {
        id: r.get(0)?,
        app_id: r.get(1)?,
        version: r.get(2)?,
        build_id: r.get(3)?,
        image_digest: r.get(4)?,
        status: state::<ReleaseStatus>(r, 5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        config: r.get(8)?,
        description: r.get(9)?,
        git_sha: r.get(10)?,
        git_message: r.get(11)?,
    })
}

fn machine_row(r: &Row) -> rusqlite::Result<Machine> {
    let config: String = r.get(6)?;
    let config = serde_json::from_str(&config).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let nonce: Option<String> = r.get(16)?;
    Ok(Machine {
        id: r.get(0)?,
        app_id: r.get(1)?,
        release_id: r.get(2)?,
        name: r.get(3)?,
        region: r.get(4)?,
        instance_id: r.get(5)?,
        config,
        image_digest: r.get(7)?,
        state: state::<MachineState>(r, 8)?,
        driver: r.get(9)?,
        port: r.get(10)?,
        pid: r.get(11)?,
        exit_code: r.get(12)?,
        oom_killed: r.get(13)?,
        restarts: r.get(14)?,
        cordoned: r.get(15)?,
        lease: match nonce {
            Some(nonce) => Some(Lease {
                nonce,
                owner: r.get::<_, Option<String>>(17)?.unwrap_or_default(),
                description: r.get::<_, Option<String>>(18)?.unwrap_or_default(),
                expires_at: r.get::<_, Option<i64>>(19)?.unwrap_or_default(),
            }),
            None => None,
        },
        created_at: r.get(20)?,
        updated_at: r.get(21)?,
        address: {
            let text: String = r.get(22)?;
            text.parse().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    22,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_app() -> (Store, App) {
        let s = Store::open_in_memory().unwrap();
        let org = s
            .create_org_with_token("default", "admin", "h1")
            .await
            .unwrap();
        let app = s.get_or_create_app(&org.id, "hello").await.unwrap();
        (s, app)
    }

    #[tokio::test]
    async fn tokens_resolve_to_their_org_only() {
        let (s, _) = store_with_app().await;
        assert_eq!(
            s.org_for_token("h1").await.unwrap().unwrap().name,
            "default"
        );
        assert!(s.org_for_token("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn app_names_are_owned_by_one_org() {
        let (s, app) = store_with_app().await;
        let other = s.create_org_with_token("other", "t", "h2").await.unwrap();
        let again = s.get_or_create_app(&app.org_id, "hello").await.unwrap();
        assert_eq!(again.id, app.id);
        let err = s.get_or_create_app(&other.id, "hello").await.unwrap_err();
        assert!(matches!(err, StoreError::NameTaken(_)));
        assert!(s.apps(&other.id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn completing_builds_numbers_releases_and_activation_supersedes() {
        let (s, app) = store_with_app().await;
        let mut releases = vec![];
        for d in ["sha256:1", "sha256:2"] {
            let b = s.enqueue_build(&app.id, d, 10).await.unwrap().build;
            s.claim_next_build().await.unwrap();
            releases.push(s.complete_build(&b.id, "sha256:img", None).await.unwrap());
        }
        assert_eq!((releases[0].version, releases[1].version), (1, 2));
        let img = s.resolve_image(&app.org_id, "hello:v2").await.unwrap();
        assert_eq!(img.as_deref(), Some("sha256:img"));
        assert!(
            s.resolve_image(&app.org_id, "hello")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(s.unfinished_releases().await.unwrap().len(), 2);
        s.activate_release(&app.id, &releases[0].id).await.unwrap();
        s.activate_release(&app.id, &releases[1].id).await.unwrap();
        let all = s.releases_for_app(&app.id).await.unwrap();
        assert_eq!(all[0].status, ReleaseStatus::Active);
        assert_eq!(all[1].status, ReleaseStatus::Superseded);
    }

    #[tokio::test]
    async fn rollbacks_copy_image_and_config_and_scale_is_kept() {
        let (s, app) = store_with_app().await;
        let b = s
            .enqueue_build(&app.id, "sha256:src", 10)
            .await
            .unwrap()
            .build;
        s.claim_next_build().await.unwrap();
        let toml = "[scale]\ncount = 2\n".to_owned();
        let v1 = s
            .complete_build(&b.id, "sha256:one", Some(toml.clone()))
            .await
            .unwrap();
        assert_eq!(v1.description, "deploy");
        let b2 = s
            .enqueue_build(&app.id, "sha256:src2", 10)
            .await
            .unwrap()
            .build;
        s.claim_next_build().await.unwrap();
        s.complete_build(&b2.id, "sha256:two", None).await.unwrap();
        let back = s.rollback_release(&v1).await.unwrap();
        assert_eq!(back.version, 3);
        assert_eq!(back.image_digest, "sha256:one");
        assert_eq!(back.build_id, v1.build_id);
        assert_eq!(back.status, ReleaseStatus::Pending);
        let stored = s.release(&back.id).await.unwrap().unwrap();
        assert_eq!(stored.config.as_deref(), Some(toml.as_str()));
        assert_eq!(stored.description, "rollback to v1");

        assert_eq!(s.app(&app.id).await.unwrap().unwrap().scale, None);
        s.set_app_scale(&app.id, Some(3)).await.unwrap();
        assert_eq!(s.app(&app.id).await.unwrap().unwrap().scale, Some(3));
        s.set_app_scale(&app.id, None).await.unwrap();
        assert_eq!(s.app_by_name("hello").await.unwrap().unwrap().scale, None);
    }

    #[tokio::test]
    async fn orgs_get_uid_ranges_of_their_own_once() {
        let (s, app) = store_with_app().await;
        let other = s.create_org_with_token("other", "t", "h2").await.unwrap();
        let first = s.org_uid_range(&app.org_id).await.unwrap();
        let second = s.org_uid_range(&other.id).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(s.org_uid_range(&app.org_id).await.unwrap(), first, "stable");
        assert!(s.org_uid_range("org_missing").await.is_err());
    }

    #[tokio::test]
    async fn machines_and_cascade_delete() {
        let (s, app) = store_with_app().await;
        let config: hangar_core::machine::MachineConfig =
            serde_json::from_str(r#"{"image": "hello:v1", "guest": {"memory_mb": 128}}"#).unwrap();
        let m = s
            .create_machine(NewMachine {
                app_id: app.id.clone(),
                release_id: None,
                name: Some("worker".into()),
                region: "local".into(),
                config: config.clone(),
                image_digest: "sha256:x".into(),
                driver: "process".into(),
                port: 4000,
                address: std::net::Ipv4Addr::LOCALHOST.into(),
            })
            .await
            .unwrap();
        s.set_machine_state(&m.id, MachineState::Started, Some(42), None)
            .await
            .unwrap();
        let live = s.live_machines().await.unwrap();
        assert_eq!((live[0].pid, live[0].name.as_str()), (Some(42), "worker"));
        assert_eq!(live[0].config, config);
        s.record_exit(&m.id, Some(137), true).await.unwrap();
        let after = s.machine(&m.id).await.unwrap().unwrap();
        assert_eq!(
            (after.state, after.exit_code, after.oom_killed),
            (MachineState::Stopped, Some(137), true)
        );
        let events = s.machine_events(&m.id, 10).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["exit", "start", "launch"]);
        s.delete_app(&app.id).await.unwrap();
        assert!(s.machine(&m.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn image_refs_are_per_org() {
        let (s, app) = store_with_app().await;
        let other = s.create_org_with_token("other", "t", "h2").await.unwrap();
        s.set_image_ref(&app.org_id, "hello:v1", "sha256:aa")
            .await
            .unwrap();
        s.set_image_ref(&app.org_id, "tool:latest", "sha256:bb")
            .await
            .unwrap();
        assert_eq!(
            s.resolve_image(&app.org_id, "hello:v1")
                .await
                .unwrap()
                .as_deref(),
            Some("sha256:aa")
        );
        assert_eq!(
            s.resolve_image(&app.org_id, "tool")
                .await
                .unwrap()
                .as_deref(),
            Some("sha256:bb")
        );
        assert_eq!(
            s.resolve_image(&app.org_id, "sha256:aa")
                .await
                .unwrap()
                .as_deref(),
            Some("sha256:aa")
        );
        assert!(
            s.resolve_image(&other.id, "hello:v1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.resolve_image(&other.id, "sha256:aa")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn migration_2_keeps_deployed_machines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO orgs VALUES ('org_1', 'default', 0);
                 INSERT INTO apps VALUES ('app_1', 'org_1', 'hello', 0);
                 INSERT INTO releases VALUES ('rel_1', 'app_1', 1, 'bld_1', 'sha256:img', 'active', NULL, 0);
                 INSERT INTO machines VALUES ('mch_1', 'app_1', 'rel_1', 'started', 'runc', 4000, 42, NULL, 0, 0);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let m = s.machine("mch_1").await.unwrap().unwrap();
        assert_eq!(m.release_id.as_deref(), Some("rel_1"));
        assert_eq!(
            (m.config.image.as_str(), m.image_digest.as_str()),
            ("sha256:img", "sha256:img")
        );
        assert_eq!(
            (m.state, m.pid, m.port),
            (MachineState::Started, Some(42), 4000)
        );
        // Releases from before migration 4: no hangar.toml, a plain deploy.
        let r = s.release("rel_1").await.unwrap().unwrap();
        assert_eq!((r.config, r.description.as_str()), (None, "deploy"));
        assert_eq!(s.app("app_1").await.unwrap().unwrap().scale, None);
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.create_org_with_token("default", "admin", "h")
                .await
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.has_orgs().await.unwrap());
    }
}
