//! A hostile build script: it tries what a tenant's build.rs could do on a
//! host that ran builds unsandboxed (read the platform's secrets, reach its
//! services, plant files, leave a daemon behind) and reports each attempt
//! as a cargo warning, `HOSTILE <what> <ok|denied: reason>`, so the build
//! log shows it. It never fails the build.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    println!("cargo:rerun-if-changed=attacks.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let list = std::fs::read_to_string(Path::new(&dir).join("attacks.txt")).unwrap_or_default();
    for line in list.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, arg) = line.split_once(' ').unwrap_or((line, ""));
        let outcome = match op {
            "read" => read(arg),
            "write" => write(arg),
            "connect" => connect(arg),
            "daemon" => daemon(arg),
            "list" => list_dir(arg),
            "sleep" => sleep(arg),
            _ => Err(format!("unknown attack {op}")),
        };
        let shown = match outcome {
            Ok(what) => format!("ok: {what}"),
            Err(why) => format!("denied: {why}"),
        };
        println!("cargo:warning=HOSTILE {op}:{arg} {shown}");
    }
}

/// Reads a file; on success shows its first bytes in hex (what a real
/// attacker would send away).
fn read(path: &str) -> Result<String, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let head: String = data.iter().take(32).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{} bytes, {head}", data.len()))
}

fn write(path: &str) -> Result<String, String> {
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    f.write_all(b"planted by a build script\n")
        .map_err(|e| e.to_string())?;
    Ok("written".into())
}

fn connect(addr: &str) -> Result<String, String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving: {e}"))?
        .collect();
    let first = addrs.first().ok_or("no address")?;
    TcpStream::connect_timeout(first, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    Ok(format!("connected to {first}"))
}

/// Starts `sleep SECONDS` in a session of its own, detached from cargo, and
/// records its pid in OUT_DIR.
fn daemon(secs: &str) -> Result<String, String> {
    let out = std::env::var("OUT_DIR").map_err(|e| e.to_string())?;
    let script =
        format!("setsid sleep {secs} </dev/null >/dev/null 2>&1 & echo $! > {out}/daemon.pid");
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("sh: {status}"));
    }
    let pid =
        std::fs::read_to_string(Path::new(&out).join("daemon.pid")).map_err(|e| e.to_string())?;
    Ok(format!("started, pid {}", pid.trim()))
}

/// Holds the build for SECONDS (for the tests that kill hangar mid-build).
fn sleep(secs: &str) -> Result<String, String> {
    let secs: u64 = secs.parse().map_err(|e| format!("{e}"))?;
    std::thread::sleep(Duration::from_secs(secs));
    Ok(format!("slept {secs} s"))
}

fn list_dir(dir: &str) -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names.join(","))
}
