//! Fetching an app's source from its repository with the `git` CLI: a
//! bare mirror per app, shallow fetches of one branch, `git archive` of
//! one commit (optionally one subdirectory) as the `.tar.gz` a deploy
//! uploads.
//!
//! The repository is a tenant's: every git run allows only the http(s)
//! transports (and `file://` where the operator allows it, for tests),
//! never a transport helper (`ext::`), reads no system or global config,
//! runs no hook, never prompts, and is killed at its deadline; a mirror
//! past its size cap is deleted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How git runs for every app.
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// `file://` repositories (off by default: a tenant could read the
    /// host's repositories).
    pub allow_file: bool,
    /// http(s) repositories on loopback, private and link-local addresses
    /// (off by default: a tenant could make Hangar fetch from the host's
    /// or its network's internal services).
    pub allow_private_hosts: bool,
    /// The deadline of one git run.
    pub timeout: Duration,
    /// The most bytes an app's mirror may take on disk.
    pub max_repo_bytes: u64,
    /// The most bytes of a commit's archive (the upload cap).
    pub max_archive_bytes: u64,
    /// How many commits a fetch brings (history beyond is not needed to
    /// build; it only helps tell an older commit from a newer one).
    pub depth: u32,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            allow_file: false,
            allow_private_hosts: false,
            timeout: Duration::from_secs(120),
            max_repo_bytes: 1024 * 1024 * 1024,
            max_archive_bytes: 256 * 1024 * 1024,
            depth: 50,
        }
    }
}

/// A git run that failed, or input refused before any ran.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    Invalid(String),
    #[error("git {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
    #[error("git {what} took longer than {secs} s")]
    TimedOut { what: &'static str, secs: u64 },
    #[error("the repository takes {bytes} bytes here, over the {max}-byte cap")]
    TooLarge { bytes: u64, max: u64 },
    #[error("running git: {0}")]
    Io(#[from] std::io::Error),
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn valid_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a repository URL a tenant gave: http(s) (or `file://` when
/// allowed), no option or transport-helper tricks, no spaces.
pub fn check_url(url: &str, allow_file: bool) -> Result<(), GitError> {
    let bad = |why: &str| Err(GitError::Invalid(format!("repository URL {url:?}: {why}")));
    if url.is_empty() || url.len() > 2048 {
        return bad("must be 1 to 2048 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let scheme_ok = url.starts_with("https://")
        || url.starts_with("http://")
        || (allow_file && url.starts_with("file:///"));
    if !scheme_ok {
        return bad(if allow_file {
            "must be https://, http:// or file:///"
        } else {
            "must be https:// or http://"
        });
    }
    if url.contains("::") {
        return bad("transport helpers are not allowed");
    }
    Ok(())
}

/// Refuses an http(s) URL whose host is, or resolves to, a loopback,
/// private, link-local or otherwise internal address, unless allowed.
/// (Checked before each git run; git resolves the name again itself.)
pub async fn check_host(url: &str, cfg: &GitConfig) -> Result<(), GitError> {
    if cfg.allow_private_hosts || url.starts_with("file://") {
        return Ok(());
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, after) = v6.split_once(']').unwrap_or((v6, ""));
        (
            h.to_owned(),
            after.strip_prefix(':').and_then(|p| p.parse().ok()),
        )
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()),
            None => (host_port.to_owned(), None),
        }
    };
    let port: u16 = port.unwrap_or(if url.starts_with("https") { 443 } else { 80 });
    let addrs: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| GitError::Invalid(format!("resolving {host:?} took over 10 s")))?
        .map_err(|e| GitError::Invalid(format!("resolving {host:?}: {e}")))?
        .map(|a| a.ip())
        .collect(),
    };
    match addrs.iter().find(|ip| internal(**ip)) {
        Some(ip) => Err(GitError::Invalid(format!(
            "repository host {host:?} is an internal address ({ip}); \
             the operator allows those with hangar up --git-allow-private-hosts"
        ))),
        None => Ok(()),
    }
}

/// Loopback, private, link-local, unspecified, shared (CGNAT) or
/// unique-local.
fn internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(v4.into()))
        }
    }
}

/// Checks a branch name: git's ref rules, narrowed to what branch names
/// use in practice.
pub fn check_branch(branch: &str) -> Result<(), GitError> {
    let ok = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(GitError::Invalid(format!(
            "branch {branch:?}: use letters, digits, '-', '_', '.' and '/' (up to 200)"
        )))
    }
}

/// Checks and normalises a subdirectory of the repository (`""` for its
/// root).
pub fn check_subdir(path: &str) -> Result<String, GitError> {
    let p = path.trim_matches('/');
    let ok = p.len() <= 200
        && p.split('/')
            .all(|part| p.is_empty() || (!part.is_empty() && part != "." && part != ".."))
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(GitError::Invalid(format!(
            "path {path:?}: a relative directory of letters, digits, '-', '_', '.' (up to 200)"
        )))
    }
}

/// An app's bare mirror.
#[derive(Clone, Debug)]
pub struct Mirror {
    dir: PathBuf,
    cfg: GitConfig,
}

impl Mirror {
    /// The mirror in `dir`, made if it is not there.
    pub async fn open(dir: &Path, cfg: GitConfig) -> Result<Mirror, GitError> {
        let m = Mirror {
            dir: dir.to_owned(),
            cfg,
        };
        if !dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(dir).await?;
            m.git("init", &["init", "--bare", "--quiet"]).await?;
        }
        Ok(m)
    }

    /// Fetches `branch` of `url` and returns its head commit. A mirror
    /// grown past its cap is removed and the fetch refused.
    pub async fn fetch_branch(&self, url: &str, branch: &str) -> Result<String, GitError> {
        check_branch(branch)?;
        self.fetch_ref(url, &format!("refs/heads/{branch}"), "head")
            .await
    }

    /// Fetches pull request `number`'s head (`refs/pull/<n>/head`, as
    /// GitHub and Gitea publish it) and returns its commit.
    pub async fn fetch_pull(&self, url: &str, number: u64) -> Result<String, GitError> {
        self.fetch_ref(
            url,
            &format!("refs/pull/{number}/head"),
            &format!("pull-{number}"),
        )
        .await
    }

    async fn fetch_ref(
        &self,
        url: &str,
        remote_ref: &str,
        local: &str,
    ) -> Result<String, GitError> {
        check_url(url, self.cfg.allow_file)?;
        check_host(url, &self.cfg).await?;
        let depth = format!("--depth={}", self.cfg.depth.max(1));
        let local_ref = format!("refs/hangar/{local}");
        let refspec = format!("+{remote_ref}:{local_ref}");
        self.git(
            "fetch",
            &["fetch", "--quiet", "--no-tags", &depth, "--", url, &refspec],
        )
        .await?;
        let bytes = dir_size(&self.dir).await;
        if bytes > self.cfg.max_repo_bytes {
            let _ = tokio::fs::remove_dir_all(&self.dir).await;
            return Err(GitError::TooLarge {
                bytes,
                max: self.cfg.max_repo_bytes,
            });
        }
        let want = format!("{local_ref}^{{commit}}");
        let out = self.git("rev-parse", &["rev-parse", &want]).await?;
        let sha = out.trim().to_owned();
        if !valid_sha(&sha) {
            return Err(GitError::Failed {
                what: "rev-parse",
                stderr: format!("not a commit id: {sha:?}"),
            });
        }
        Ok(sha)
    }

    /// The commit's message (at most 4 KiB of it).
    pub async fn message(&self, sha: &str) -> Result<String, GitError> {
        self.check_sha(sha)?;
        let out = self
            .git("log", &["log", "-1", "--format=%B", sha, "--"])
            .await?;
        let mut msg = out.trim().to_owned();
        if msg.len() > 4096 {
            let mut cut = 4096;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        Ok(msg)
    }

    /// Whether `older` is an ancestor of `newer` in what was fetched (a
    /// commit older than the fetched history reads as not one).
    pub async fn is_ancestor(&self, older: &str, newer: &str) -> Result<bool, GitError> {
        self.check_sha(older)?;
        self.check_sha(newer)?;
        match self
            .git("merge-base", &["merge-base", "--is-ancestor", older, newer])
            .await
        {
            Ok(_) => Ok(true),
            Err(GitError::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes commit `sha` (its `subdir`, or all of it) to `out` as a
    /// `.tar.gz`, refused past the archive cap.
    pub async fn archive(&self, sha: &str, subdir: &str, out: &Path) -> Result<(), GitError> {
        self.check_sha(sha)?;
        let subdir = check_subdir(subdir)?;
        let tree = if subdir.is_empty() {
            sha.to_owned()
        } else {
            format!("{sha}:{subdir}")
        };
        let file = std::fs::File::create(out)?;
        let mut cmd = self.command(&["archive", "--format=tar.gz", &tree]);
        cmd.stdout(file);
        let result = self.run("archive", cmd).await;
        let written = tokio::fs::metadata(out).await.map_or(0, |m| m.len());
        if result.is_err() || written > self.cfg.max_archive_bytes {
            let _ = tokio::fs::remove_file(out).await;
        }
        if let Err(GitError::Failed { stderr, .. }) = &result
            && !subdir.is_empty()
            && stderr.contains("not a valid object name")
        {
            return Err(GitError::Invalid(format!(
                "commit {sha} has no directory {subdir:?}"
            )));
        }
        result?;
        if written > self.cfg.max_archive_bytes {
            return Err(GitError::TooLarge {
                bytes: written,
                max: self.cfg.max_archive_bytes,
            });
        }
        Ok(())
    }

    fn check_sha(&self, sha: &str) -> Result<(), GitError> {
        if valid_sha(sha) {
            Ok(())
        } else {
            Err(GitError::Invalid(format!("{sha:?} is not a commit id")))
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = git_command(&self.cfg);
        cmd.arg("--git-dir").arg(&self.dir).args(args);
        cmd
    }

    async fn git(&self, what: &'static str, args: &[&str]) -> Result<String, GitError> {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped());
        self.run(what, cmd).await
    }

    async fn run(&self, what: &'static str, cmd: Command) -> Result<String, GitError> {
        run(&self.cfg, what, cmd).await
    }
}

/// The head commit of `branch` at `url`, without fetching (None if the
/// branch is not there).
pub async fn ls_remote(
    cfg: &GitConfig,
    url: &str,
    branch: &str,
) -> Result<Option<String>, GitError> {
    check_url(url, cfg.allow_file)?;
    check_branch(branch)?;
    check_host(url, cfg).await?;
    let want = format!("refs/heads/{branch}");
    let mut cmd = git_command(cfg);
    cmd.args(["ls-remote", "--heads", "--", url, &want])
        .stdout(Stdio::piped());
    let out = run(cfg, "ls-remote", cmd).await?;
    Ok(out.lines().find_map(|line| {
        let (sha, name) = line.split_once('\t')?;
        (name == want && valid_sha(sha)).then(|| sha.to_owned())
    }))
}

/// `git`, confined: only the allowed transports, no system or global
/// config, no hooks, no prompts, no credential helpers.
fn git_command(cfg: &GitConfig) -> Command {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        "protocol.http.allow=always",
        "-c",
        if cfg.allow_file {
            "protocol.file.allow=always"
        } else {
            "protocol.file.allow=never"
        },
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "credential.helper=",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("HOME", "/nonexistent")
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_ASKPASS", "/bin/false")
    .env("SSH_ASKPASS", "/bin/false")
    .env("LC_ALL", "C")
    .stdin(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd
}

/// Runs `cmd` within the deadline; its stdout (when piped, up to 1 MiB)
/// on success, the tail of its stderr on failure.
async fn run(cfg: &GitConfig, what: &'static str, mut cmd: Command) -> Result<String, GitError> {
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(1024 * 1024).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 * 1024).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) =
        tokio::time::timeout(cfg.timeout, work)
            .await
            .map_err(|_| GitError::TimedOut {
                what,
                secs: cfg.timeout.as_secs(),
            })?;
    if status?.success() {
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let text = String::from_utf8_lossy(&err);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    Err(GitError::Failed {
        what,
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
    })
}

/// Bytes under `dir` (files only; what cannot be read counts 0).
async fn dir_size(dir: &Path) -> u64 {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                    _ => {}
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_unless_files_are_allowed() {
        check_url("https://example.com/o/r.git", false).unwrap();
        check_url("http://10.0.0.1:3000/o/r", false).unwrap();
        assert!(check_url("file:///srv/git/r.git", false).is_err());
        check_url("file:///srv/git/r.git", true).unwrap();
        for bad in [
            "ext::sh -c touch% /tmp/pwned",
            "--upload-pack=touch /tmp/x",
            "https://example.com/a b",
            "ssh://git@example.com/r",
            "/srv/git/r.git",
            "https://x/y::z",
            "",
        ] {
            assert!(check_url(bad, true).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn internal_hosts_are_refused_unless_allowed() {
        let cfg = GitConfig::default();
        for bad in [
            "http://127.0.0.1:7070/x.git",
            "http://localhost/x.git",
            "https://user:pw@10.1.2.3/x.git",
            "http://[::1]:80/x.git",
            "http://169.254.169.254/latest",
            "http://[::ffff:192.168.1.1]/x",
            "http://100.64.0.1/x",
        ] {
            let err = check_host(bad, &cfg).await.unwrap_err();
            assert!(err.to_string().contains("internal"), "{bad}: {err}");
        }
        check_host("https://93.184.215.14/x.git", &cfg)
            .await
            .unwrap();
        let open = GitConfig {
            allow_private_hosts: true,
            ..cfg
        };
        check_host("http://127.0.0.1:7070/x.git", &open)
            .await
            .unwrap();
    }

    #[test]
    fn branches_and_paths_follow_the_rules() {
        for ok in ["main", "release/1.2", "feature-x_y"] {
            check_branch(ok).unwrap();
        }
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a//b", "/a", "a@{1}"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
        assert_eq!(check_subdir("/apps/web/").unwrap(), "apps/web");
        assert_eq!(check_subdir("").unwrap(), "");
        for bad in ["../x", "a/../b", "a/./b", "-x", "a b"] {
            assert!(check_subdir(bad).is_err(), "{bad}");
        }
    }

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git is installed");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn a_mirror_fetches_a_branch_and_archives_one_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("app/src")).unwrap();
        sh(&work, &["init", "--quiet", "-b", "main"]);
        std::fs::write(work.join("app/src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(work.join("README"), "top\n").unwrap();
        sh(&work, &["add", "-A"]);
        sh(&work, &["commit", "--quiet", "-m", "first\n\nbody"]);
        let first = sh(&work, &["rev-parse", "HEAD"]);
        std::fs::write(work.join("app/src/main.rs"), "fn main() { }\n").unwrap();
        sh(&work, &["commit", "--quiet", "-am", "second"]);
        let second = sh(&work, &["rev-parse", "HEAD"]);
        let url = format!("file://{}", work.display());

        let cfg = GitConfig::default();
        // file:// is refused unless allowed.
        let m = Mirror::open(&tmp.path().join("m1"), cfg.clone())
            .await
            .unwrap();
        assert!(matches!(
            m.fetch_branch(&url, "main").await,
            Err(GitError::Invalid(_))
        ));
        let cfg = GitConfig {
            allow_file: true,
            ..cfg
        };
        assert_eq!(
            ls_remote(&cfg, &url, "main").await.unwrap().as_deref(),
            Some(second.as_str())
        );
        assert_eq!(ls_remote(&cfg, &url, "nope").await.unwrap(), None);
        let m = Mirror::open(&tmp.path().join("m"), cfg.clone())
            .await
            .unwrap();
        assert_eq!(m.fetch_branch(&url, "main").await.unwrap(), second);
        assert_eq!(m.message(&first).await.unwrap(), "first\n\nbody");
        assert!(m.is_ancestor(&first, &second).await.unwrap());
        assert!(!m.is_ancestor(&second, &first).await.unwrap());
        assert!(m.fetch_branch(&url, "nope").await.is_err());

        let out = tmp.path().join("src.tar.gz");
        m.archive(&second, "app", &out).await.unwrap();
        let listing = std::process::Command::new("tar")
            .arg("tzf")
            .arg(&out)
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(listing.contains("src/main.rs"), "{listing}");
        assert!(!listing.contains("README"), "{listing}");
        let err = m.archive(&second, "web", &out).await.unwrap_err();
        assert!(err.to_string().contains("no directory"), "{err}");
        assert!(!out.exists());

        // Over the size cap: the mirror goes.
        let tiny = GitConfig {
            max_repo_bytes: 1,
            ..cfg
        };
        let m = Mirror::open(&tmp.path().join("m2"), tiny).await.unwrap();
        assert!(matches!(
            m.fetch_branch(&url, "main").await,
            Err(GitError::TooLarge { .. })
        ));
        assert!(!tmp.path().join("m2").exists());
    }
}
