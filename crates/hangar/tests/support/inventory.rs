//! What an app holds on the host's servers and disk, for tests that check
//! a destroy (or a preview's teardown) leaves nothing: its machines'
//! containers, cgroups, bundles and logs, its build logs and work dir, its
//! database and role on the host's Postgres, its Redis user and keys.

use serde_json::Value;

use super::TestPlatform;

/// The host's Postgres, as its admin.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `sql` as the admin and returns the first column of each row.
pub fn admin_query(sql: &str, param: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(ADMIN_URL, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}"
                )
            });
        tokio::spawn(conn);
        client
            .query(sql, &[&param])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    })
}

pub fn database_exists(name: &str) -> bool {
    !admin_query(
        "SELECT datname::text FROM pg_database WHERE datname = $1",
        name,
    )
    .is_empty()
}

/// Everything a deployed app holds on the host, found by its machines'
/// ids and the names its resources were provisioned under.
pub struct Inventory {
    pub app: String,
    pub machines: Vec<String>,
    /// Its builds (their logs).
    pub builds: Vec<String>,
    /// The database, and its role (of the same name).
    pub database: String,
    pub redis_user: String,
    pub redis_prefix: String,
}

impl Inventory {
    /// What `app` holds now, asked with `token` (its org's).
    pub fn of(p: &TestPlatform, token: &str, app: &str) -> Inventory {
        let (code, v) = p.call_as(token, "GET", &format!("/api/v1/apps/{app}"), Value::Null);
        assert_eq!(code, 200, "{v}");
        let machines: Vec<String> = v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "started")
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!machines.is_empty(), "{v}");
        let (code, listed) = p.call_as(
            token,
            "GET",
            &format!("/api/v1/apps/{app}/resources"),
            Value::Null,
        );
        assert_eq!(code, 200, "{listed}");
        let name = |kind: &str| {
            listed["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["kind"] == kind)
                .and_then(|r| r["name"].as_str())
                .unwrap_or_else(|| panic!("no {kind} resource: {listed}"))
                .to_owned()
        };
        let redis_user = name("redis");
        let key = hangar_resources::ResourceKey::of_redis_user(&redis_user).unwrap();
        let builds: Vec<String> = v["builds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!builds.is_empty(), "{v}");
        Inventory {
            app: app.to_owned(),
            machines,
            builds,
            database: name("postgres"),
            redis_user,
            redis_prefix: key.redis_prefix(),
        }
    }

    /// Each thing the app holds, and whether it is there now.
    pub fn present(&self, p: &TestPlatform) -> Vec<(String, bool)> {
        let data = p.data_dir();
        let containers = p.runc_containers();
        let mut out = Vec::new();
        for id in &self.machines {
            out.push((format!("runc container {id}"), containers.contains(id)));
            out.push((format!("cgroup of {id}"), !cgroups_of(id).is_empty()));
            out.push((
                format!("bundle dir machines/{id}"),
                data.join("machines").join(id).exists(),
            ));
            out.push((
                format!("log file logs/{}/{id}.log", self.app),
                data.join("logs")
                    .join(&self.app)
                    .join(format!("{id}.log"))
                    .exists(),
            ));
        }
        for id in &self.builds {
            out.push((
                format!("build log build-logs/{id}.log"),
                data.join("build-logs").join(format!("{id}.log")).exists(),
            ));
        }
        out.push((
            format!("work dir builds/{}", self.app),
            data.join("builds").join(&self.app).exists(),
        ));
        out.push((
            format!("database {}", self.database),
            database_exists(&self.database),
        ));
        out.push((
            format!("role {}", self.database),
            !admin_query(
                "SELECT rolname::text FROM pg_roles WHERE rolname = $1",
                &self.database,
            )
            .is_empty(),
        ));
        out.push((
            format!("Redis ACL user {}", self.redis_user),
            !redis_cli(&["ACL", "GETUSER", &self.redis_user]).is_empty(),
        ));
        out.push((
            format!("Redis keys {}*", self.redis_prefix),
            !redis_keys(&self.redis_prefix).is_empty(),
        ));
        out
    }
}

/// The cgroup directories of a machine, v1 (one per controller) or v2.
pub fn cgroups_of(machine: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join("hangar").join(machine)];
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        candidates.push(entry.path().join("hangar").join(machine));
    }
    candidates.into_iter().filter(|p| p.is_dir()).collect()
}

/// `redis-cli ARGS` against the host's Redis: its output, trimmed.
pub fn redis_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The keys under `prefix` on the host's Redis.
pub fn redis_keys(prefix: &str) -> Vec<String> {
    redis_cli(&["--scan", "--pattern", &format!("{prefix}*")])
        .lines()
        .map(str::to_owned)
        .collect()
}
