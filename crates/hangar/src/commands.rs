//! The CLI's subcommands other than `up`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hangar_api_types::hangar::{
    AppList, AppState, AppStatus, BuildCancelled, BuildDetail, Deployed, Destroyed, ImageImported,
    ReleaseList, ReleaseStarted, ResourceList, RollbackRequest, ScaleRequest, SecretList,
    SecretsSet, SecretsUnset,
};
use hangar_core::status::{BuildStatus, MachineState, ReleaseStatus};
use http::Method;

use crate::client::{Api, get_url};
use crate::config::CliConfig;
use crate::pack::{self, human_bytes};

/// The API client from the config file and environment.
pub fn api() -> Result<Api> {
    let cfg = CliConfig::load()?;
    let (url, token) = cfg.resolve()?;
    Ok(Api::new(&url, &token, cfg.api_tls(&url)?))
}

/// `hangar login --token T [--api URL]`.
pub fn login(
    token: &str,
    api_url: Option<&str>,
    fingerprint: Option<&str>,
    ca_cert: Option<&Path>,
) -> Result<()> {
    let mut cfg = CliConfig::load().unwrap_or_default();
    cfg.token = Some(token.trim().to_owned());
    if let Some(url) = api_url {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("--api {url:?}: expected an http:// or https:// URL");
        }
        if url.starts_with("http://") && fingerprint.is_some() {
            bail!("--fingerprint pins a TLS certificate: use an https:// --api URL");
        }
        cfg.api_url = Some(url.to_owned());
    }
    // A pin belongs to one server: a new URL without one drops it.
    if api_url.is_some() || fingerprint.is_some() {
        cfg.fingerprint = fingerprint
            .map(crate::tls_client::normalize_fingerprint)
            .transpose()?;
    }
    if let Some(ca) = ca_cert {
        let ca = std::path::absolute(ca)?;
        crate::tls_client::client_config(None, Some(&ca))?;
        cfg.ca_cert = Some(ca);
    }
    let path = cfg.save()?;
    println!("Logged in; token stored in {}", path.display());
    Ok(())
}

/// The app name for `dir`: `--app`, else `[package] name` of its Cargo.toml.
pub(crate) fn app_name(dir: &Path, explicit: Option<&str>) -> Result<String> {
    if let Some(name) = explicit {
        return Ok(name.to_owned());
    }
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{} has no Cargo.toml: run `hangar deploy` in a cargo project",
            dir.display()
        )
    })?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no [package] name; pass --app NAME")?;
    let app = hangar_core::name::AppName::from_package(name).with_context(|| {
        format!("the package name {name:?} does not make an app name; pass --app NAME")
    })?;
    Ok(app.to_string())
}

/// `hangar deploy [DIR] [--app NAME]`.
pub async fn deploy(dir: &Path, app: Option<&str>, wait: bool) -> Result<()> {
    let api = api()?;
    let name = app_name(dir, app)?;
    let started = Instant::now();
    // A Shuttle project keeps its secrets in Secrets.toml: they are set
    // (sealed) before the build, and never packed with the source.
    if let Some((path, secrets)) = crate::secrets_file::find(dir, &["Secrets.toml"])?
        && !secrets.is_empty()
    {
        let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
        println!(
            "==> Setting {} secret(s) from {}: {}",
            names.len(),
            path.display(),
            names.join(", ")
        );
        let _: SecretsSet = api
            .send_json_as(
                Method::PUT,
                &format!("/api/v1/apps/{name}/secrets"),
                &secrets,
            )
            .await?;
    }
    // A broken hangar.toml is refused here, before anything is uploaded
    // (the builder checks it again).
    check_app_config(dir, &name)?;
    println!("==> Packing {} as app {name}", dir.display());
    let dir = dir.to_owned();
    let packed =
        tokio::task::spawn_blocking(move || pack::pack(&dir, pack::DEFAULT_MAX_BYTES)).await??;
    println!(
        "==> Uploading {} ({} files) to {}",
        human_bytes(packed.data.len() as u64),
        packed.files,
        api.base()
    );
    let answer: Deployed = api
        .json_as(
            Method::POST,
            &format!("/api/v1/apps/{name}/deploys"),
            Bytes::from(packed.data),
            "application/gzip",
        )
        .await?;
    let build_id = answer.build.id;
    let url = answer.url;
    println!("==> Build {build_id} queued");
    if !wait {
        println!("    follow it with `hangar status {name}`");
        return Ok(());
    }
    let mut out = std::io::stdout();
    api.stream(
        &format!("/api/v1/builds/{build_id}/log?follow=true"),
        |chunk| {
            let _ = out.write_all(chunk);
            let _ = out.flush();
        },
    )
    .await?;

    // The build is over; follow the release it created, if any.
    let deadline = Instant::now() + Duration::from_secs(300);
    let version = loop {
        let detail: BuildDetail = api.get_as(&format!("/api/v1/builds/{build_id}")).await?;
        let reason = detail.build.error.as_deref();
        match detail.build.status {
            BuildStatus::Failed => {
                bail!("build failed: {}", reason.unwrap_or("see the log above"))
            }
            BuildStatus::Superseded => bail!(
                "build {build_id} was not deployed: {}",
                reason.unwrap_or("a newer deploy of this app superseded it")
            ),
            BuildStatus::Cancelled => {
                bail!("build {build_id} was {}", reason.unwrap_or("cancelled"))
            }
            BuildStatus::Succeeded => {}
            // The log stream ended early (e.g. the server restarted): wait.
            BuildStatus::Queued | BuildStatus::Building => {}
        }
        if let Some(release) = &detail.release {
            break release.version;
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for the build's release; see `hangar status {name}`");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_release(&api, &name, version).await?;

    // Live: wait until the URL answers through the proxy.
    let app_tls = CliConfig::load()?.app_tls()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get_url(&url, app_tls.clone()).await {
            Ok((s, _)) if !s.is_server_error() => break,
            Ok((s, _)) if Instant::now() > deadline => {
                bail!("v{version} is live but {url} answers {s}")
            }
            Err(e) if Instant::now() > deadline => {
                let hint = if url.starts_with("https://") {
                    " (if this server's certificates come from a private CA, trust it: `hangar login --ca-cert FILE` or HANGAR_CA_CERT)"
                } else {
                    ""
                };
                bail!("v{version} is live but {url} does not answer: {e:#}{hint}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    println!(
        "==> v{version} of {name} is live at {url} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Validates `DIR/hangar.toml` if there is one, printing its warnings.
fn check_app_config(dir: &Path, app: &str) -> Result<()> {
    use hangar_core::app_config::{AppConfig, FILE_NAME};
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("reading {}: {e}", path.display()),
    };
    let config = AppConfig::parse_for(&text, app)?;
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// Follows release vVERSION of `app` until it is live (Ok) or failed
/// (Err with the reason), printing how many of its machines pass.
async fn wait_release(api: &Api, app: &str, version: i64) -> Result<()> {
    println!("==> Rolling out v{version}");
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut last = String::new();
    loop {
        let a: AppStatus = api.get_as(&format!("/api/v1/apps/{app}")).await?;
        let release = a.releases.iter().find(|r| r.version == version);
        match release.map(|r| r.status) {
            Some(ReleaseStatus::Active) | Some(ReleaseStatus::Superseded) => return Ok(()),
            Some(ReleaseStatus::Failed) => bail!(
                "release v{version} failed, the previous release keeps serving:\n{}",
                release
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or("no reason recorded")
            ),
            Some(ReleaseStatus::Pending) | Some(ReleaseStatus::Deploying) | None => {}
        }
        // A release not listed (yet) has no id: the machines of no release
        // count then, as they always have.
        let release_id = release.map(|r| r.id.as_str());
        let mine: Vec<_> = a
            .machines
            .iter()
            .filter(|m| m.release_id.as_deref() == release_id && m.state == MachineState::Started)
            .collect();
        if !mine.is_empty() {
            let passing = mine.iter().filter(|m| m.health == "passing").count();
            let line = format!(
                "    v{version}: {} machine(s) started, {passing} passing checks",
                mine.len()
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for the rollout; see `hangar status {app}`");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `hangar releases APP`.
pub async fn releases(app: &str) -> Result<()> {
    let list: ReleaseList = api()?
        .get_as(&format!("/api/v1/apps/{app}/releases"))
        .await?;
    let releases = list.releases;
    if releases.is_empty() {
        println!("{app} has no releases yet: `hangar deploy` it.");
        return Ok(());
    }
    println!(
        "{:<8} {:<11} {:<9} {:<20} IMAGE",
        "VERSION", "STATUS", "CREATED", "DESCRIPTION"
    );
    for r in releases {
        println!(
            "{:<8} {:<11} {:<9} {:<20} {}",
            format!("v{}", r.version),
            r.status.as_str(),
            ago(r.created_at),
            r.description,
            short_digest(&r.image_digest),
        );
        if let Some(e) = &r.error {
            for line in e.lines().take(3) {
                println!("         {line}");
            }
        }
    }
    Ok(())
}

/// `hangar rollback APP [VERSION]`.
pub async fn rollback(app: &str, version: Option<i64>) -> Result<()> {
    let api = api()?;
    let started = Instant::now();
    let answer: ReleaseStarted = api
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/rollback"),
            &RollbackRequest { version },
        )
        .await?;
    let new_version = answer.release.version;
    let what = answer.release.description.as_str();
    println!("==> v{new_version} ({what}) of {app}: no build, the image is reused");
    wait_release(&api, app, new_version).await?;
    println!(
        "==> v{new_version} ({what}) of {app} is live ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `hangar scale APP COUNT`.
pub async fn scale(app: &str, count: u32) -> Result<()> {
    let api = api()?;
    let started = Instant::now();
    println!("==> Scaling {app} to {count} machine(s)");
    let _: AppStatus = api
        .send_json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/scale"),
            &ScaleRequest { count },
        )
        .await?;
    println!(
        "==> {app} runs {count} machine{} ({:.1} s)",
        if count == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `hangar builds cancel BUILD`.
pub async fn builds_cancel(build: &str) -> Result<()> {
    let answer: BuildCancelled = api()?
        .json_as(
            Method::POST,
            &format!("/api/v1/builds/{build}/cancel"),
            Bytes::new(),
            "application/json",
        )
        .await?;
    let how = match answer.was {
        BuildStatus::Building => "it was running; its processes were killed",
        _ => "it had not started",
    };
    println!("Cancelled build {build} of {} ({how})", answer.app);
    Ok(())
}

/// `sha256:` and the first 12 hex digits of an image digest.
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// An app's state as the API names it (`running`, `down`, `not deployed`).
fn app_state(state: AppState) -> &'static str {
    match state {
        AppState::Running => "running",
        AppState::Down => "down",
        AppState::NotDeployed => "not deployed",
    }
}

fn ago(unix: i64) -> String {
    let secs = (hangar_core::now_unix() - unix).max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// `hangar apps`.
pub async fn apps() -> Result<()> {
    let answer: AppList = api()?.get_as("/api/v1/apps").await?;
    let apps = answer.apps;
    if apps.is_empty() {
        println!("No apps yet: `hangar deploy` one.");
        return Ok(());
    }
    println!("{:<24} {:<13} {:<8} URL", "NAME", "STATUS", "RELEASE");
    for a in apps {
        let release = a
            .active_release
            .as_ref()
            .map(|r| format!("v{}", r.version))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<13} {:<8} {}",
            a.name,
            app_state(a.status),
            release,
            a.url
        );
    }
    Ok(())
}

/// `hangar status APP`.
pub async fn status(app: &str) -> Result<()> {
    let a: AppStatus = api()?.get_as(&format!("/api/v1/apps/{app}")).await?;
    println!("App:     {}", a.name);
    println!("URL:     {}", a.url);
    println!("Status:  {}", app_state(a.status));
    println!("Driver:  {}", a.driver);
    print_rows("Machines", &a.machines, |m| {
        format!(
            "  {}  {:<9} {:<8} port {:<5} pid {:<7} {}",
            m.id,
            m.state.as_str(),
            if m.state == MachineState::Started {
                m.health.as_str()
            } else {
                ""
            },
            m.port,
            m.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            m.exit_code.map(|c| format!("exit {c}")).unwrap_or_default()
        )
    });
    print_rows("Releases", &a.releases, |r| {
        let mut line = format!(
            "  v{:<4} {:<11} {}  {}",
            r.version,
            r.status.as_str(),
            ago(r.created_at),
            short_digest(&r.image_digest),
        );
        if let Some(e) = &r.error {
            line.push_str(&format!(
                "\n         reason: {}",
                e.lines().next().unwrap_or_default()
            ));
        }
        line
    });
    print_rows("Builds", &a.builds, |b| {
        let mut line = format!(
            "  {}  {:<10} {}",
            b.id,
            b.status.as_str(),
            ago(b.created_at)
        );
        if let Some(e) = &b.error {
            line.push_str(&format!("  ({e})"));
        }
        line
    });
    Ok(())
}

fn print_rows<T>(title: &str, rows: &[T], line: impl Fn(&T) -> String) {
    println!("{title}:{}", if rows.is_empty() { " none" } else { "" });
    for r in rows {
        println!("{}", line(r));
    }
}

/// `hangar logs APP [-f]`.
pub async fn logs(app: &str, follow: bool) -> Result<()> {
    let mut out = std::io::stdout();
    api()?
        .stream(
            &format!("/api/v1/apps/{app}/logs?follow={follow}"),
            |chunk| {
                let _ = out.write_all(chunk);
                let _ = out.flush();
            },
        )
        .await
}

/// `hangar destroy APP [--yes]`.
pub async fn destroy(app: &str, yes: bool) -> Result<()> {
    let api = api()?;
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!(
                "destroying {app} deletes its machines, releases and logs; pass --yes to confirm"
            );
        }
        print!("Destroy {app}, its machines, releases and logs? Type the app name to confirm: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != app {
            bail!("not confirmed; nothing was destroyed");
        }
    }
    let answer: Destroyed = api.delete_as(&format!("/api/v1/apps/{app}")).await?;
    println!("Destroyed {app}");
    for what in &answer.resources_dropped {
        println!("  dropped {what}");
    }
    Ok(())
}

/// `hangar secrets set APP NAME=VALUE...`.
pub async fn secrets_set(app: &str, pairs: &[String]) -> Result<()> {
    let api = api()?;
    let mut values = std::collections::BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("{pair:?} is not NAME=VALUE (use NAME=- to read the value from stdin)");
        };
        let value = if value == "-" {
            let mut v = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)?;
            v.strip_suffix('\n').map(str::to_owned).unwrap_or(v)
        } else {
            value.to_owned()
        };
        values.insert(name.to_owned(), value);
    }
    let answer: SecretsSet = api
        .send_json_as(Method::PUT, &format!("/api/v1/apps/{app}/secrets"), &values)
        .await?;
    println!(
        "Set {} on {app}; machines get them at their next start (deploy or restart).",
        answer.set.join(", ")
    );
    Ok(())
}

/// `hangar secrets list APP`: names only.
pub async fn secrets_list(app: &str) -> Result<()> {
    let answer: SecretList = api()?
        .get_as(&format!("/api/v1/apps/{app}/secrets"))
        .await?;
    let list = answer.secrets;
    if list.is_empty() {
        println!("{app} has no secrets (set some with `hangar secrets set {app} NAME=VALUE`)");
        return Ok(());
    }
    println!("{:<32} UPDATED", "NAME");
    for s in list {
        println!("{:<32} {}", s.name, s.updated_at);
    }
    Ok(())
}

/// `hangar secrets unset APP NAME...`.
pub async fn secrets_unset(app: &str, names: &[String]) -> Result<()> {
    let api = api()?;
    for name in names {
        let _: SecretsUnset = api
            .delete_as(&format!("/api/v1/apps/{app}/secrets/{name}"))
            .await?;
        println!("Unset {name} on {app}");
    }
    Ok(())
}

/// `hangar resources APP`.
pub async fn resources(app: &str) -> Result<()> {
    let answer: ResourceList = api()?
        .get_as(&format!("/api/v1/apps/{app}/resources"))
        .await?;
    let list = answer.resources;
    if list.is_empty() {
        println!("{app} declares no resources");
        return Ok(());
    }
    println!("{:<10} {:<32} STATUS", "KIND", "NAME");
    for r in list {
        let mut status = r.status;
        if let Some(detail) = &r.detail {
            status.push_str(&format!(": {detail}"));
        }
        println!("{:<10} {:<32} {status}", r.kind, r.name);
    }
    Ok(())
}

/// `hangar image import PATH --name NAME[:TAG]`.
pub async fn image_import(path: &Path, name: &str) -> Result<()> {
    let api = api()?;
    let p = path.to_owned();
    let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        if p.is_dir() {
            // An OCI layout directory: send it as a tar.
            let mut tar = tar::Builder::new(Vec::new());
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &p)
                .with_context(|| format!("packing {}", p.display()))?;
            Ok(tar.into_inner()?)
        } else {
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        }
    })
    .await??;
    println!(
        "==> Uploading {} to {}",
        human_bytes(data.len() as u64),
        api.base()
    );
    let answer: ImageImported = api
        .json_as(
            Method::POST,
            &format!("/api/v1/images?name={}", query_escape(name)),
            Bytes::from(data),
            "application/x-tar",
        )
        .await?;
    println!("==> Imported {} ({})", answer.name, answer.digest);
    Ok(())
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_escaped() {
        assert_eq!(super::query_escape("tools/x:1.0"), "tools%2Fx%3A1.0");
        assert_eq!(super::query_escape("Bad Name"), "Bad%20Name");
    }
}
