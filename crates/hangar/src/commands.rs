//! The CLI's subcommands other than `up`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::client::{Api, get_url};
use crate::config::CliConfig;
use crate::pack::{self, human_bytes};

/// The API client from the config file and environment.
pub fn api() -> Result<Api> {
    let (url, token) = CliConfig::load()?.resolve()?;
    Ok(Api::new(&url, &token))
}

/// `hangar login --token T [--api URL]`.
pub fn login(token: &str, api_url: Option<&str>) -> Result<()> {
    let mut cfg = CliConfig::load().unwrap_or_default();
    cfg.token = Some(token.trim().to_owned());
    if let Some(url) = api_url {
        cfg.api_url = Some(url.trim_end_matches('/').to_owned());
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
        api.json(
            Method::PUT,
            &format!("/api/v1/apps/{name}/secrets"),
            serde_json::to_vec(&secrets)?.into(),
            "application/json",
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
    let answer = api
        .json(
            Method::POST,
            &format!("/api/v1/apps/{name}/deploys"),
            Bytes::from(packed.data),
            "application/gzip",
        )
        .await?;
    let build_id = answer["build"]["id"]
        .as_str()
        .context("the API returned no build id")?
        .to_owned();
    let url = answer["url"].as_str().unwrap_or_default().to_owned();
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
        let status = api.get(&format!("/api/v1/builds/{build_id}")).await?;
        let reason = status["build"]["error"].as_str();
        match status["build"]["status"].as_str() {
            Some("failed") => bail!("build failed: {}", reason.unwrap_or("see the log above")),
            Some("superseded") => bail!(
                "build {build_id} was not deployed: {}",
                reason.unwrap_or("a newer deploy of this app superseded it")
            ),
            Some("cancelled") => bail!("build {build_id} was {}", reason.unwrap_or("cancelled")),
            Some("succeeded") => {}
            // The log stream ended early (e.g. the server restarted): wait.
            _ => {}
        }
        if let Some(version) = status["release"]["version"].as_i64() {
            break version;
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for the build's release; see `hangar status {name}`");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_release(&api, &name, version).await?;

    // Live: wait until the URL answers through the proxy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get_url(&url).await {
            Ok((s, _)) if !s.is_server_error() => break,
            Ok((s, _)) if Instant::now() > deadline => {
                bail!("v{version} is live but {url} answers {s}")
            }
            Err(e) if Instant::now() > deadline => {
                bail!("v{version} is live but {url} does not answer: {e}")
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
        let a = api.get(&format!("/api/v1/apps/{app}")).await?;
        let release = a["releases"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["version"].as_i64() == Some(version)))
            .cloned()
            .unwrap_or(Value::Null);
        match release["status"].as_str() {
            Some("active") | Some("superseded") => return Ok(()),
            Some("failed") => bail!(
                "release v{version} failed, the previous release keeps serving:\n{}",
                release["error"].as_str().unwrap_or("no reason recorded")
            ),
            _ => {}
        }
        let mine: Vec<&Value> = a["machines"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter(|m| m["release_id"] == release["id"] && m["state"] == "started")
                    .collect()
            })
            .unwrap_or_default();
        if !mine.is_empty() {
            let passing = mine.iter().filter(|m| m["health"] == "passing").count();
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
    let a = api()?.get(&format!("/api/v1/apps/{app}/releases")).await?;
    let releases = a["releases"].as_array().cloned().unwrap_or_default();
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
            format!("v{}", r["version"].as_i64().unwrap_or_default()),
            r["status"].as_str().unwrap_or_default(),
            ago(r["created_at"].as_i64().unwrap_or_default()),
            r["description"].as_str().unwrap_or_default(),
            short_digest(&r["image_digest"]),
        );
        if let Some(e) = r["error"].as_str() {
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
    let body = match version {
        Some(v) => serde_json::json!({ "version": v }),
        None => serde_json::json!({}),
    };
    let answer = api
        .json(
            Method::POST,
            &format!("/api/v1/apps/{app}/rollback"),
            serde_json::to_vec(&body)?.into(),
            "application/json",
        )
        .await?;
    let release = &answer["release"];
    let new_version = release["version"]
        .as_i64()
        .context("the API returned no release")?;
    let what = release["description"].as_str().unwrap_or("rollback");
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
    api.json(
        Method::POST,
        &format!("/api/v1/apps/{app}/scale"),
        serde_json::to_vec(&serde_json::json!({ "count": count }))?.into(),
        "application/json",
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
    let answer = api()?
        .json(
            Method::POST,
            &format!("/api/v1/builds/{build}/cancel"),
            Bytes::new(),
            "application/json",
        )
        .await?;
    let how = match answer["was"].as_str() {
        Some("building") => "it was running; its processes were killed",
        _ => "it had not started",
    };
    println!(
        "Cancelled build {build} of {} ({how})",
        answer["app"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// `sha256:` and the first 12 hex digits of an image digest.
fn short_digest(digest: &Value) -> &str {
    let d = digest.as_str().unwrap_or_default();
    d.get(..19).unwrap_or(d)
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
    let answer = api()?.get("/api/v1/apps").await?;
    let apps = answer["apps"].as_array().cloned().unwrap_or_default();
    if apps.is_empty() {
        println!("No apps yet: `hangar deploy` one.");
        return Ok(());
    }
    println!("{:<24} {:<13} {:<8} URL", "NAME", "STATUS", "RELEASE");
    for a in apps {
        let release = a["active_release"]["version"]
            .as_i64()
            .map(|v| format!("v{v}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<13} {:<8} {}",
            a["name"].as_str().unwrap_or_default(),
            a["status"].as_str().unwrap_or_default(),
            release,
            a["url"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `hangar status APP`.
pub async fn status(app: &str) -> Result<()> {
    let a = api()?.get(&format!("/api/v1/apps/{app}")).await?;
    println!("App:     {}", a["name"].as_str().unwrap_or_default());
    println!("URL:     {}", a["url"].as_str().unwrap_or_default());
    println!("Status:  {}", a["status"].as_str().unwrap_or_default());
    println!("Driver:  {}", a["driver"].as_str().unwrap_or_default());
    print_rows("Machines", &a["machines"], |m| {
        format!(
            "  {}  {:<9} {:<8} port {:<5} pid {:<7} {}",
            m["id"].as_str().unwrap_or_default(),
            m["state"].as_str().unwrap_or_default(),
            if m["state"] == "started" {
                m["health"].as_str().unwrap_or_default()
            } else {
                ""
            },
            m["port"].as_i64().unwrap_or_default(),
            m["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            m["exit_code"]
                .as_i64()
                .map(|c| format!("exit {c}"))
                .unwrap_or_default()
        )
    });
    print_rows("Releases", &a["releases"], |r| {
        let mut line = format!(
            "  v{:<4} {:<11} {}  {}",
            r["version"].as_i64().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            ago(r["created_at"].as_i64().unwrap_or_default()),
            short_digest(&r["image_digest"]),
        );
        if let Some(e) = r["error"].as_str() {
            line.push_str(&format!(
                "\n         reason: {}",
                e.lines().next().unwrap_or_default()
            ));
        }
        line
    });
    print_rows("Builds", &a["builds"], |b| {
        let mut line = format!(
            "  {}  {:<10} {}",
            b["id"].as_str().unwrap_or_default(),
            b["status"].as_str().unwrap_or_default(),
            ago(b["created_at"].as_i64().unwrap_or_default())
        );
        if let Some(e) = b["error"].as_str() {
            line.push_str(&format!("  ({e})"));
        }
        line
    });
    Ok(())
}

fn print_rows(title: &str, rows: &Value, line: impl Fn(&Value) -> String) {
    let rows = rows.as_array().cloned().unwrap_or_default();
    println!("{title}:{}", if rows.is_empty() { " none" } else { "" });
    for r in &rows {
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
    let answer = api.delete(&format!("/api/v1/apps/{app}")).await?;
    println!("Destroyed {app}");
    for dropped in answer["resources_dropped"].as_array().into_iter().flatten() {
        if let Some(what) = dropped.as_str() {
            println!("  dropped {what}");
        }
    }
    Ok(())
}

/// `hangar secrets set APP NAME=VALUE...`.
pub async fn secrets_set(app: &str, pairs: &[String]) -> Result<()> {
    let api = api()?;
    let mut values = serde_json::Map::new();
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
        values.insert(name.to_owned(), Value::String(value));
    }
    let body = serde_json::to_vec(&values)?;
    let answer = api
        .json(
            hyper::Method::PUT,
            &format!("/api/v1/apps/{app}/secrets"),
            body.into(),
            "application/json",
        )
        .await?;
    let names: Vec<&str> = answer["set"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "Set {} on {app}; machines get them at their next start (deploy or restart).",
        names.join(", ")
    );
    Ok(())
}

/// `hangar secrets list APP`: names only.
pub async fn secrets_list(app: &str) -> Result<()> {
    let answer = api()?.get(&format!("/api/v1/apps/{app}/secrets")).await?;
    let list = answer["secrets"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("{app} has no secrets (set some with `hangar secrets set {app} NAME=VALUE`)");
        return Ok(());
    }
    println!("{:<32} UPDATED", "NAME");
    for s in list {
        println!(
            "{:<32} {}",
            s["name"].as_str().unwrap_or("?"),
            s["updated_at"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `hangar secrets unset APP NAME...`.
pub async fn secrets_unset(app: &str, names: &[String]) -> Result<()> {
    let api = api()?;
    for name in names {
        api.delete(&format!("/api/v1/apps/{app}/secrets/{name}"))
            .await?;
        println!("Unset {name} on {app}");
    }
    Ok(())
}

/// `hangar resources APP`.
pub async fn resources(app: &str) -> Result<()> {
    let answer = api()?.get(&format!("/api/v1/apps/{app}/resources")).await?;
    let list = answer["resources"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("{app} declares no resources");
        return Ok(());
    }
    println!("{:<10} {:<32} STATUS", "KIND", "NAME");
    for r in list {
        let mut status = r["status"].as_str().unwrap_or("?").to_owned();
        if let Some(detail) = r["detail"].as_str() {
            status.push_str(&format!(": {detail}"));
        }
        println!(
            "{:<10} {:<32} {status}",
            r["kind"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?")
        );
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
    let answer = api
        .json(
            Method::POST,
            &format!("/api/v1/images?name={}", query_escape(name)),
            Bytes::from(data),
            "application/x-tar",
        )
        .await?;
    println!(
        "==> Imported {} ({})",
        answer["name"].as_str().unwrap_or(name),
        answer["digest"].as_str().unwrap_or_default()
    );
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
