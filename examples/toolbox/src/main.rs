//! A test program for machines, misbehaving on request:
//!
//! - `toolbox` (no argument): a tiny HTTP server on `$PORT` answering `toolbox`.
//! - `toolbox alloc MB`: allocates and touches MB mebibytes, 16 MiB at a time,
//!   printing its progress, then sleeps (an OOM test expects it to be killed).
//! - `toolbox forkbomb`: spawns sleeping children until the system refuses,
//!   prints how many it got, then sleeps (a pids-limit test reads that).
//! - `toolbox sleep`: sleeps forever.
//! - `toolbox exit CODE`: exits with CODE.
//! - `toolbox echo WORDS…`: prints WORDS on stdout and a line on stderr.

use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("serve") => serve(),
        Some("alloc") => alloc(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024)),
        Some("forkbomb") => forkbomb(),
        Some("sleep") => sleep_forever(),
        Some("echo") => {
            println!("{}", args[2..].join(" "));
            eprintln!("toolbox: echo done");
        }
        Some("exit") => std::process::exit(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1)),
        Some(other) => {
            eprintln!("toolbox: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn serve() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match std::net::TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("toolbox: cannot bind {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("toolbox: listening on port {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            // GET /slow answers after 400 ms, to hold requests in flight.
            if buf[..n].starts_with(b"GET /slow ") {
                std::thread::sleep(Duration::from_millis(400));
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoolbox\n",
            );
        });
    }
}

fn alloc(mb: usize) {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mb.div_ceil(16) {
        // Touch every page so the memory is really used.
        chunks.push(vec![1u8; 16 << 20]);
        println!("toolbox: allocated {} MiB", (i + 1) * 16);
    }
    println!("toolbox: allocated all {mb} MiB");
    sleep_forever();
}

fn forkbomb() {
    let me = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut children = Vec::new();
    loop {
        match std::process::Command::new(&me).arg("sleep").spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                println!("toolbox: spawned {} children, then: {e}", children.len());
                break;
            }
        }
        if children.len() >= 100_000 {
            println!(
                "toolbox: spawned {} children without being stopped",
                children.len()
            );
            break;
        }
    }
    sleep_forever();
}
