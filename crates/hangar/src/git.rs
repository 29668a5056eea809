//! Deploy on push from the CLI: `hangar git connect|status|deploy|
//! disconnect` and `hangar why APP SHA`; and `hangar up`'s git flags.

use anyhow::Result;
use hangar_api_types::hangar::{
    ApprovePreview, CommitVerdict, ExtendPreview, GitConnect, GitConnection, PreviewInfo,
    PreviewList,
};
use http::Method;

use crate::commands::api;

/// `hangar up`'s git settings.
#[derive(Debug, Clone, clap::Args)]
pub struct GitArgs {
    /// Seconds between polls of every connected branch (`git ls-remote`),
    /// which catch pushes whose webhook was lost; 0 turns polling off.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub git_poll_secs: u64,
    /// Seconds one git run (a fetch, an archive) may take.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(5..=3_600))]
    pub git_timeout_secs: u64,
    /// The most an app's repository mirror may take on disk, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub git_max_repo_mb: u64,
    /// Let apps connect `file:///` repositories (the host's own: for a
    /// single-tenant host or tests; never on a shared platform).
    #[arg(long)]
    pub git_allow_file_urls: bool,
    /// Let apps connect http(s) repositories on loopback, private and
    /// link-local addresses (a git server inside the operator's network).
    #[arg(long)]
    pub git_allow_private_hosts: bool,
    /// Seconds a pull request's preview lives without a push or a request
    /// (default 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(i64).range(5..=90 * 24 * 3600))]
    pub git_preview_ttl_secs: i64,
}

impl GitArgs {
    /// The git settings of every app's fetches.
    pub fn config(&self, max_archive_bytes: u64) -> hangar_git::GitConfig {
        hangar_git::GitConfig {
            allow_file: self.git_allow_file_urls,
            allow_private_hosts: self.git_allow_private_hosts,
            timeout: std::time::Duration::from_secs(self.git_timeout_secs),
            max_repo_bytes: self.git_max_repo_mb.saturating_mul(1 << 20),
            max_archive_bytes,
            ..hangar_git::GitConfig::default()
        }
    }

    /// How often to poll (None: never).
    pub fn poll_every(&self) -> Option<std::time::Duration> {
        (self.git_poll_secs > 0).then(|| std::time::Duration::from_secs(self.git_poll_secs))
    }
}

/// `hangar git connect APP --repo URL [--branch B] [--path DIR]`.
pub async fn connect(
    app: &str,
    repo: &str,
    branch: Option<&str>,
    path: Option<&str>,
) -> Result<()> {
    let api = api()?;
    let body = GitConnect {
        repo: repo.to_owned(),
        branch: branch.map(str::to_owned),
        path: path.map(str::to_owned),
    };
    let c: GitConnection = api
        .send_json_as(Method::POST, &format!("/api/v1/apps/{app}/git"), &body)
        .await?;
    println!(
        "Connected {} to {} (branch {}{})",
        c.app,
        c.repo,
        c.branch,
        if c.path.is_empty() {
            String::new()
        } else {
            format!(", path {}", c.path)
        }
    );
    if let Some(e) = &c.check_error {
        println!("warning: {e}");
    }
    println!("\nWebhook URLs (POST, content type application/json):");
    for p in &c.hook_paths {
        println!("    {}{p}", api.base());
    }
    if let Some(secret) = &c.secret {
        println!("\nWebhook secret (shown once; connect again for a new one):\n    {secret}");
    }
    match c.poll_secs {
        0 => println!("\nPolling is off: only webhooks (and `hangar git deploy {app}`) deploy."),
        s => println!("\nHangar also polls the branch every {s} s, in case a webhook is lost."),
    }
    println!("The next push deploys; `hangar git deploy {app}` deploys the branch's head now.");
    Ok(())
}

/// `hangar git status APP`.
pub async fn status(app: &str) -> Result<()> {
    let c: GitConnection = api()?.get_as(&format!("/api/v1/apps/{app}/git")).await?;
    println!("{}: {} branch {}", c.app, c.repo, c.branch);
    if !c.path.is_empty() {
        println!("  path:        {}", c.path);
    }
    println!(
        "  head:        {}",
        c.head.as_deref().unwrap_or("(not fetched yet)")
    );
    if let Some(at) = &c.checked_at {
        println!("  checked at:  {at}");
    }
    if let Some(e) = &c.check_error {
        println!("  last error:  {e}");
    }
    match c.deliveries.first() {
        Some(d) => println!(
            "  last delivery: {} {} {} at {}{}",
            d.source,
            d.event,
            d.verdict,
            d.received_at,
            d.detail
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        None => println!("  last delivery: none yet"),
    }
    match c
        .commits
        .iter()
        .find(|v| v.state == "deployed" && v.detail.contains("serving"))
    {
        Some(v) => println!("  deployed:    {} ({})", v.commit, v.detail),
        None => println!("  deployed:    no commit yet"),
    }
    if !c.commits.is_empty() {
        println!("\nCommits (newest first):");
        for v in &c.commits {
            println!("  {}  {:<11} {}", short(&v.commit), v.state, v.detail);
        }
    }
    Ok(())
}

/// `hangar git deploy APP`: the branch's head, now.
pub async fn deploy(app: &str) -> Result<()> {
    let v: CommitVerdict = api()?
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/git/deploy"),
            &serde_json::json!({}),
        )
        .await?;
    print_verdict(&v);
    Ok(())
}

/// `hangar git disconnect APP`.
pub async fn disconnect(app: &str) -> Result<()> {
    let c: GitConnection = api()?.delete_as(&format!("/api/v1/apps/{app}/git")).await?;
    println!(
        "Disconnected {} from {}; it keeps running its current release.",
        c.app, c.repo
    );
    Ok(())
}

/// `hangar why APP SHA`.
pub async fn why(app: &str, sha: &str) -> Result<()> {
    let v: CommitVerdict = api()?
        .get_as(&format!("/api/v1/apps/{app}/git/commits/{sha}"))
        .await?;
    print_verdict(&v);
    Ok(())
}

fn print_verdict(v: &CommitVerdict) {
    println!("{}: {}", v.commit, v.state);
    println!("  {}", v.detail);
    if let Some(m) = v.message.as_deref().and_then(|m| m.lines().next()) {
        println!("  message:  {m}");
    }
    println!("  heard of: {} via {}", v.heard_at, v.via);
    if let Some(b) = &v.build {
        println!("  build:    {b}");
    }
    if let Some(r) = v.release {
        println!("  release:  v{r}");
    }
    if let Some(tail) = &v.log_tail {
        println!("  log tail:");
        for line in tail.lines() {
            println!("    {line}");
        }
    }
}

/// `hangar previews list APP`.
pub async fn previews(app: &str) -> Result<()> {
    let list: PreviewList = api()?
        .get_as(&format!("/api/v1/apps/{app}/previews"))
        .await?;
    if list.previews.is_empty() {
        println!("{app} has no previews (pull requests of its repository get one)");
    }
    for p in &list.previews {
        print_preview(p);
    }
    Ok(())
}

fn print_preview(p: &PreviewInfo) {
    println!(
        "#{:<5} {:<18} {}  head {} ({}) by {}{}",
        p.number,
        p.state,
        p.url.as_deref().unwrap_or(&p.app),
        short(&p.head),
        p.head_ref,
        p.author,
        if p.trusted { "" } else { ", needs approval" }
    );
    if let Some(d) = &p.detail {
        println!("       {d}");
    }
    if p.state != "closed" {
        println!("       expires {}", p.expires_at);
    }
}

/// `hangar previews approve APP N --sha SHA`.
pub async fn approve(app: &str, number: u64, sha: &str) -> Result<()> {
    let body = ApprovePreview {
        sha: sha.to_owned(),
    };
    let p: PreviewInfo = api()?
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/previews/{number}/approve"),
            &body,
        )
        .await?;
    print_preview(&p);
    Ok(())
}

/// `hangar previews extend APP N --hours H`.
pub async fn extend(app: &str, number: u64, hours: u64) -> Result<()> {
    let body = ExtendPreview {
        seconds: hours.saturating_mul(3600),
    };
    let p: PreviewInfo = api()?
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/previews/{number}/extend"),
            &body,
        )
        .await?;
    print_preview(&p);
    Ok(())
}

/// `hangar previews destroy APP N`.
pub async fn destroy_preview(app: &str, number: u64) -> Result<()> {
    let p: PreviewInfo = api()?
        .delete_as(&format!("/api/v1/apps/{app}/previews/{number}"))
        .await?;
    print_preview(&p);
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
