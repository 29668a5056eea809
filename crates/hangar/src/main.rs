//! `hangar`: the one binary. `hangar up` runs the platform; every other
//! subcommand is the CLI talking to its API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use hangar::{commands, run, up};

#[derive(Parser)]
#[command(
    name = "hangar",
    version,
    about = "Deploy cargo projects as running services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DriverArg {
    Auto,
    Runc,
    Process,
}

// `up` has many flags; the enum is parsed once, its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the whole platform (API, builder, node agent, proxy) in this process.
    Up {
        /// Where state, images, build caches and logs live.
        #[arg(long, env = "HANGAR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// API listen address.
        #[arg(long, default_value = "127.0.0.1:7070")]
        api_listen: SocketAddr,
        /// Edge proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy_listen: SocketAddr,
        /// Admin listen address: Prometheus metrics at /metrics.
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin_listen: SocketAddr,
        /// Apps are served at <app>.<domain>.
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// Runtime driver: runc (isolated), process (no isolation), auto.
        #[arg(long, value_enum, default_value = "auto")]
        driver: DriverArg,
        /// Largest accepted source upload, in bytes.
        #[arg(long, default_value_t = 100 * 1024 * 1024)]
        max_upload_bytes: u64,
        /// Largest accepted image archive (hangar image import), in bytes.
        #[arg(long, default_value_t = 4 * 1024 * 1024 * 1024)]
        max_image_bytes: u64,
        /// Per-app cargo target dirs (default: <data-dir>/targets). A root
        /// given here is a cache shared on purpose: it is trusted across
        /// apps that reuse a name (under the default, a dir a deleted app
        /// left is cleared before the name's next owner builds).
        #[arg(long, env = "HANGAR_BUILD_TARGET_ROOT")]
        build_target_root: Option<PathBuf>,
        /// Memory limit of each machine, in MiB.
        #[arg(long, default_value_t = 512)]
        memory_mb: u64,
        /// Memory limit of each build container, in MiB (default: 8192, or
        /// the host's memory if it has less; at most the host's).
        #[arg(long, value_parser = clap::value_parser!(u64).range(256..=(1 << 24)))]
        build_memory_mb: Option<u64>,
        /// Processes and threads each build container may have.
        #[arg(long, default_value_t = hangar_build::BuildLimits::DEFAULT_PIDS,
              value_parser = clap::value_parser!(u64).range(64..=(1 << 22)))]
        build_pids: u64,
        /// CPUs each build may use, fractions allowed (default: all of the
        /// host's; at most the host's).
        #[arg(long)]
        build_cpus: Option<f64>,
        /// Host uid (and gid) sandboxed builds run as; not a user of the host.
        #[arg(long, default_value_t = hangar_build::BUILD_UID,
              value_parser = clap::value_parser!(u32).range(1..))]
        build_uid: u32,
        /// Builds never use the network: every dependency must already be in
        /// the cargo home (CARGO_NET_OFFLINE=true does the same).
        #[arg(long, env = "CARGO_NET_OFFLINE")]
        build_offline: bool,
        /// Builds run at once, each in its own sandbox (default: 2, or 1 on
        /// a one-CPU host); the next build goes to the organisation whose
        /// last build started longest ago.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=hangar_build::MAX_WORKERS as u64))]
        build_workers: Option<u64>,
        /// Builds of one organisation that may wait in the queue; past it a
        /// deploy is refused (429).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        org_max_queued_builds: u32,
        /// A build whose log passes this many MiB is stopped and failed,
        /// saying so (a build printing without end would fill the disk).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        build_log_max_mb: u64,
        /// An app's build logs together may take this many MiB; past it the
        /// oldest are removed after each build (0: only the newest is kept).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
        build_logs_per_app_mb: u64,
        /// KiB a second a running build's log may grow by: past it the rest
        /// of that second's output is dropped, with a line saying how much.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
        build_log_rate_kb: u64,
        /// Private IPv4 subnet runc machines get their own addresses from
        /// (each machine has a network namespace of its own).
        #[arg(long, default_value = "10.201.0.0/16")]
        machine_subnet: hangar_node::Subnet,
        /// What machines may reach outside the host: public (public
        /// addresses only; private ranges denied) or none.
        #[arg(long, default_value = "public")]
        egress: hangar_node::Egress,
        /// A load balancer in front of the proxy (an address or network,
        /// repeatable): its X-Forwarded-For chain is extended. From anyone
        /// else the chain is replaced by the client's address.
        #[arg(long = "trusted-proxy", value_name = "CIDR")]
        trusted_proxies: Vec<hangar_proxy::IpNet>,
        /// Machine logs kept per app (MiB): past it the largest log is cut
        /// and its tail kept in <machine>.log.1.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
        app_log_max_mb: u64,
        /// KiB a second one machine's log may grow by: past it the rest of
        /// that second's output is dropped, with a line saying how much.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
        app_log_rate_kb: u64,
        /// Seconds an API request body (an upload, a JSON body) may go
        /// without a byte before it is answered 408 and its connection closed.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        api_body_progress_secs: u64,
        /// Apps each organisation may have.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        org_max_apps: u32,
        /// Machines each organisation may have (stopped ones count).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        org_max_machines: u32,
        /// Memory of all of an organisation's machines, in MiB.
        #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
        org_max_memory_mb: u64,
        /// Memory of all machines together, in MiB (default: the host's
        /// less a tenth, at least 1 GiB, for hangar and its servers).
        #[arg(long, value_parser = clap::value_parser!(u64).range(256..=(1 << 30)))]
        machines_memory_mb: Option<u64>,
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        tls: hangar::tls_up::TlsArgs,
        #[command(flatten)]
        git: hangar::git::GitArgs,
    },
    /// Store a token (and API URL) for this CLI.
    Login {
        #[arg(long)]
        token: String,
        /// The API's URL, e.g. https://hangar.example.com:7070.
        #[arg(long)]
        api: Option<String>,
        /// Trust the API's certificate by this SHA-256 fingerprint (what
        /// `hangar up --api-tls` prints for its self-signed one) instead of
        /// by a CA.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Also trust this CA (PEM) for the API's certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Build and deploy the cargo project in DIR (default: the current dir).
    Deploy {
        dir: Option<PathBuf>,
        /// App name (default: the package name).
        #[arg(long)]
        app: Option<String>,
        /// Return once the build is queued.
        #[arg(long)]
        no_wait: bool,
    },
    /// List your apps.
    Apps,
    /// Show an app's machines, releases and builds.
    Status { app: String },
    /// List an app's releases: version, status, where each came from.
    Releases { app: String },
    /// Roll back to an earlier release (default: the one before the live
    /// one): its image and config again, as a new release, without a build.
    Rollback {
        app: String,
        /// The version to go back to, e.g. 3 or v3.
        #[arg(value_parser = parse_version)]
        version: Option<i64>,
    },
    /// Set how many machines the app runs (overrides hangar.toml's [scale] count).
    Scale {
        app: String,
        /// Machines, 1 to 100.
        count: u32,
    },
    /// Print an app's output.
    Logs {
        app: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Manage builds.
    Builds {
        #[command(subcommand)]
        command: BuildsCommand,
    },
    /// Manage images in Hangar's store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Delete an app, its machines, releases and logs.
    Destroy {
        app: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Manage an app's secrets (sealed at rest; machines get them at start).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// List the resources an app's code declares and their state.
    Resources { app: String },
    /// Manage an app's custom domains (hosts outside the platform's domain).
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Deploy an app on every push to a branch of its git repository.
    Git {
        #[command(subcommand)]
        command: GitCommand,
    },
    /// Pull requests' preview environments of an app.
    Previews {
        #[command(subcommand)]
        command: PreviewsCommand,
    },
    /// Say what became of a commit: received, ignored, queued, building,
    /// failed, superseded, deployed or rolled back, and why.
    Why {
        app: String,
        /// The commit (at least 4 hex digits).
        sha: String,
    },
    /// Manage the organisation's API tokens (admin scope).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// What was changed, when and with which token (newest first).
    Audit {
        /// Only what concerns this app.
        #[arg(long)]
        app: Option<String>,
        /// How many entries (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run the hangar-runtime app in DIR on this machine, without Docker,
    /// with the resources it declares: a local Postgres cluster (or
    /// --postgres-url), in-memory cache and pub/sub unless --redis-url /
    /// --nats-url, secrets from Secrets.dev.toml (else Secrets.toml).
    Run {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The port the app listens on ($PORT).
        #[arg(long, env = "PORT", default_value_t = 8000)]
        port: u16,
        /// Build with --release.
        #[arg(long)]
        release: bool,
        /// Hangar's data dir; local runs keep their state under <data-dir>/local.
        #[arg(long, env = "HANGAR_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        servers: Servers,
    },
}

/// The servers apps' declared resources live on (`up` and `run`).
#[derive(clap::Args)]
struct Servers {
    /// Postgres server apps get their databases on: a role that may create
    /// roles and databases, e.g. postgres://postgres@127.0.0.1:5432/postgres.
    /// Without it: a cluster Hangar runs itself, if PostgreSQL is installed.
    #[arg(long, env = "HANGAR_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Redis server apps get a user of their own on (an admin that may run
    /// ACL SETUSER), e.g. redis://127.0.0.1:6379. Without it: `up` refuses
    /// apps that declare Redis, `run` gives them an in-memory cache.
    #[arg(long, env = "HANGAR_REDIS_URL")]
    redis_url: Option<String>,
    /// NATS server apps' PubSub uses, e.g. nats://127.0.0.1:4222. Without
    /// it: `up` refuses apps that declare PubSub, `run` gives them
    /// in-process pub/sub.
    #[arg(long, env = "HANGAR_NATS_URL")]
    nats_url: Option<String>,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Set secrets: NAME=VALUE ...; `NAME=-` reads the value from stdin.
    Set {
        app: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// List secret names (never values).
    List { app: String },
    /// Remove secrets by name.
    Unset {
        app: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum GitCommand {
    /// Deploy APP from a repository: prints the webhook URLs and secret.
    /// Creates the app if it does not exist yet.
    Connect {
        app: String,
        /// The repository's URL (https://; a token may go in its user part).
        #[arg(long)]
        repo: String,
        /// The branch whose pushes deploy (default main).
        #[arg(long)]
        branch: Option<String>,
        /// The app's directory in the repository (default: its root).
        #[arg(long)]
        path: Option<String>,
    },
    /// Show APP's connection, its last delivery and its deployed commit.
    Status { app: String },
    /// Fetch the branch and deploy its head now.
    Deploy { app: String },
    /// Stop deploying APP from its repository.
    Disconnect { app: String },
}

#[derive(Subcommand)]
enum PreviewsCommand {
    /// APP's previews: state, URL, head, author, expiry.
    List { app: String },
    /// Build pull request N's preview from exactly commit SHA (a fork's,
    /// or an author's without write access, waits for this).
    Approve {
        app: String,
        number: u64,
        #[arg(long)]
        sha: String,
    },
    /// Keep pull request N's preview longer.
    Extend {
        app: String,
        number: u64,
        /// Hours to add (default 24, at most 90 days).
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Tear pull request N's preview down now.
    Destroy { app: String, number: u64 },
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// Route HOST to APP; prints the DNS record to create. Its certificate
    /// is ordered at once (ACME), or is the one given with --cert/--key.
    Add {
        app: String,
        host: String,
        /// A certificate of yours for HOST (PEM chain, leaf first).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// List APP's custom domains and their certificates.
    List { app: String },
    /// Stop routing HOST to APP.
    Remove { app: String, host: String },
    /// Order a new certificate for HOST (a custom domain of APP, or its own
    /// name) now.
    Renew { app: String, host: String },
    /// Turn HSTS (Strict-Transport-Security) on or off for APP's HTTPS.
    Hsts {
        app: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// admin (everything), read (every read), or deploy:APP (deploy
        /// and read APP only).
        #[arg(long)]
        scope: String,
        /// A label for lists and the audit log, e.g. CI.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Refused after this long, e.g. 30d, 12h (at most 3650d).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token by id (`tok_…`): its next request is refused.
    Revoke { id: String },
    /// Replace the token a Shuttle app's runtime uses for its resources;
    /// machines get the new one at their next start.
    RotateShuttle { app: String },
}

#[derive(Subcommand)]
enum BuildsCommand {
    /// Cancel a queued or running build (its processes are killed).
    Cancel {
        /// The build's id (`bld_…`, printed by `hangar deploy` and
        /// `hangar status`).
        build: String,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (a directory or a tar) or a `docker save` tar.
    Import {
        path: PathBuf,
        /// The name machines use in config.image, e.g. myimage:1.0.
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The builder's resource scanner (a process of its own: see
    // hangar_build::resources::scan_main); not a user command.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == hangar_build::resources::SCAN_COMMAND {
        return hangar_build::resources::scan_main(std::path::Path::new(&args[2]));
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. } | Command::Run { .. }) {
        // A client command piped into `head` ends quietly, like any Unix
        // tool, instead of panicking on a closed stdout. The server roles
        // keep Rust's default (ignored SIGPIPE: a client gone is an error
        // on one socket, not the end of hangar).
        // SAFETY: setting a signal's disposition has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    std::process::ExitCode::SUCCESS
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            api_listen,
            proxy_listen,
            admin_listen,
            domain,
            driver,
            max_upload_bytes,
            max_image_bytes,
            build_target_root,
            memory_mb,
            build_memory_mb,
            build_pids,
            build_cpus,
            build_uid,
            build_offline,
            build_workers,
            org_max_queued_builds,
            build_log_max_mb,
            build_logs_per_app_mb,
            build_log_rate_kb,
            machine_subnet,
            egress,
            trusted_proxies,
            app_log_max_mb,
            app_log_rate_kb,
            api_body_progress_secs,
            org_max_apps,
            org_max_machines,
            org_max_memory_mb,
            machines_memory_mb,
            servers,
            tls,
            git,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            up::run(up::UpOptions {
                data_dir: data_dir.unwrap_or_else(up::default_data_dir),
                api_listen,
                proxy_listen,
                admin_listen,
                domain,
                driver: match driver {
                    DriverArg::Auto => hangar_node::DriverChoice::Auto,
                    DriverArg::Runc => hangar_node::DriverChoice::Runc,
                    DriverArg::Process => hangar_node::DriverChoice::Process,
                },
                max_upload_bytes,
                max_image_bytes,
                build_target_root,
                memory_mb,
                build_limits: hangar_build::BuildLimits {
                    memory_mb: build_memory_mb
                        .unwrap_or_else(|| hangar_build::BuildLimits::for_host().memory_mb),
                    pids: build_pids,
                    cpus: build_cpus,
                },
                build_uid,
                build_offline,
                build_workers: build_workers
                    .map_or_else(hangar_build::default_workers, |n| n as usize),
                org_max_queued_builds,
                build_log_max_mb,
                build_logs_per_app_mb,
                build_log_rate_kb,
                postgres_url: servers.postgres_url,
                redis_url: servers.redis_url,
                nats_url: servers.nats_url,
                machine_subnet,
                egress,
                trusted_proxies,
                app_log_max_mb,
                app_log_rate_kb,
                api_body_progress_secs,
                quotas: hangar_api::quota::Quotas {
                    apps: org_max_apps,
                    machines: org_max_machines,
                    memory_mb: org_max_memory_mb,
                },
                machines_memory_mb,
                tls,
                git,
            })
            .await
        }
        Command::Login {
            token,
            api,
            fingerprint,
            ca_cert,
        } => commands::login(
            &token,
            api.as_deref(),
            fingerprint.as_deref(),
            ca_cert.as_deref(),
        ),
        Command::Deploy { dir, app, no_wait } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            commands::deploy(&dir, app.as_deref(), !no_wait).await
        }
        Command::Apps => commands::apps().await,
        Command::Status { app } => commands::status(&app).await,
        Command::Releases { app } => commands::releases(&app).await,
        Command::Rollback { app, version } => commands::rollback(&app, version).await,
        Command::Scale { app, count } => commands::scale(&app, count).await,
        Command::Logs { app, follow } => commands::logs(&app, follow).await,
        Command::Destroy { app, yes } => commands::destroy(&app, yes).await,
        Command::Secrets { command } => match command {
            SecretsCommand::Set { app, pairs } => commands::secrets_set(&app, &pairs).await,
            SecretsCommand::List { app } => commands::secrets_list(&app).await,
            SecretsCommand::Unset { app, names } => commands::secrets_unset(&app, &names).await,
        },
        Command::Resources { app } => commands::resources(&app).await,
        Command::Git { command } => match command {
            GitCommand::Connect {
                app,
                repo,
                branch,
                path,
            } => hangar::git::connect(&app, &repo, branch.as_deref(), path.as_deref()).await,
            GitCommand::Status { app } => hangar::git::status(&app).await,
            GitCommand::Deploy { app } => hangar::git::deploy(&app).await,
            GitCommand::Disconnect { app } => hangar::git::disconnect(&app).await,
        },
        Command::Why { app, sha } => hangar::git::why(&app, &sha).await,
        Command::Previews { command } => match command {
            PreviewsCommand::List { app } => hangar::git::previews(&app).await,
            PreviewsCommand::Approve { app, number, sha } => {
                hangar::git::approve(&app, number, &sha).await
            }
            PreviewsCommand::Extend { app, number, hours } => {
                hangar::git::extend(&app, number, hours).await
            }
            PreviewsCommand::Destroy { app, number } => {
                hangar::git::destroy_preview(&app, number).await
            }
        },
        Command::Domains { command } => match command {
            DomainsCommand::Add {
                app,
                host,
                cert,
                key,
            } => hangar::domains::add(&app, &host, cert.as_deref(), key.as_deref()).await,
            DomainsCommand::List { app } => hangar::domains::list(&app).await,
            DomainsCommand::Remove { app, host } => hangar::domains::remove(&app, &host).await,
            DomainsCommand::Renew { app, host } => hangar::domains::renew(&app, &host).await,
            DomainsCommand::Hsts { app, state } => hangar::domains::hsts(&app, state == "on").await,
        },
        Command::Tokens { command } => match command {
            TokensCommand::Create {
                scope,
                name,
                expires,
            } => hangar::tokens::create(&scope, &name, expires.as_deref()).await,
            TokensCommand::List => hangar::tokens::list().await,
            TokensCommand::Revoke { id } => hangar::tokens::revoke(&id).await,
            TokensCommand::RotateShuttle { app } => hangar::tokens::rotate_shuttle(&app).await,
        },
        Command::Audit { app, limit } => hangar::tokens::audit(app.as_deref(), limit).await,
        Command::Run {
            dir,
            port,
            release,
            data_dir,
            servers,
        } => {
            let code = run::run(run::RunOptions {
                dir,
                port,
                release,
                data_dir: data_dir.unwrap_or_else(up::default_data_dir),
                postgres_url: servers.postgres_url,
                redis_url: servers.redis_url,
                nats_url: servers.nats_url,
            })
            .await?;
            std::process::exit(code)
        }
        Command::Builds {
            command: BuildsCommand::Cancel { build },
        } => commands::builds_cancel(&build).await,
        Command::Image {
            command: ImageCommand::Import { path, name },
        } => commands::image_import(&path, &name).await,
    }
}

/// A release version as users write it: `3` or `v3`.
fn parse_version(s: &str) -> Result<i64, String> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is not a release version such as 3 or v3"))
}
