//! A test program for machines, misbehaving on request:
//!
//! - `toolbox` (no argument): a tiny HTTP server on `$PORT` answering
//!   `toolbox` (or `$TOOLBOX_REPLY`); `GET /slow` after 400 ms, `GET
//!   /hold/<ms>` after that many (at most a minute).
//! - `toolbox alloc MB`: allocates and touches MB mebibytes, 16 MiB at a time,
//!   printing its progress, then sleeps (an OOM test expects it to be killed).
//! - `toolbox forkbomb`: spawns sleeping children until the system refuses,
//!   prints how many it got, then sleeps (a pids-limit test reads that).
//! - `toolbox sleep`: sleeps forever.
//! - `toolbox exit CODE`: exits with CODE.
//! - `toolbox echo WORDS…`: prints WORDS on stdout and a line on stderr.
//! - `toolbox connect HOST:PORT…`: tries a TCP connection to each (1 s
//!   each) and prints `CONNECT <addr> ok` or `CONNECT <addr> failed: why`
//!   (the network isolation tests read those lines).
//! - `toolbox pg HOST:PORT USER DATABASE`: sends a Postgres startup message
//!   and prints `PG <first reply type> <error message, if any>`.
//! - `toolbox send HOST:PORT TEXT…`: sends each TEXT (with `\r\n` escapes)
//!   on one connection, waiting 300 ms after each, and prints
//!   `REPLY <what came back, escaped>`.
//! - `toolbox cat FILE`: prints a file.
//! - `toolbox whoami`: prints `UID <euid>`, then tries what only a host
//!   root could: `UNSHARE-USER`/`UNSHARE-NET` (new namespaces) and
//!   `WRITE <path>` for a few host-owned paths, each `ok` or the error.

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
        Some("connect") => connect(&args[2..]),
        Some("pg") if args.len() == 5 => pg(&args[2], &args[3], &args[4]),
        Some("send") if args.len() >= 4 => send(&args[2], &args[3..]),
        Some("whoami") => whoami(),
        Some("compat") => compat(),
        Some("spam") => spam(),
        Some("cat") if args.len() == 3 => match std::fs::read_to_string(&args[2]) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("toolbox: {}: {e}", args[2]);
                std::process::exit(1);
            }
        },
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
    let reply = std::env::var("TOOLBOX_REPLY").unwrap_or_else(|_| "toolbox".into());
    let answer: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}\n",
            reply.len() + 1
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            // GET /slow answers after 400 ms, to hold requests in flight;
            // GET /hold/<ms> after that many (at most a minute).
            if buf[..n].starts_with(b"GET /slow ") {
                std::thread::sleep(Duration::from_millis(400));
            } else if let Some(rest) = buf[..n].strip_prefix(b"GET /hold/") {
                let ms: u64 = String::from_utf8_lossy(rest)
                    .split(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms.min(60_000)));
            }
            let _ = stream.write_all(answer);
        });
    }
}

fn connect(targets: &[String]) {
    use std::net::ToSocketAddrs;
    // All at once (a dropped SYN costs the whole timeout), printed in order.
    let attempts: Vec<_> = targets
        .iter()
        .cloned()
        .map(|target| {
            std::thread::spawn(move || {
                let outcome = match target.to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(addr)) => {
                        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                            Ok(_) => "ok".to_owned(),
                            Err(e) => format!("failed: {e}"),
                        }
                    }
                    Ok(None) => "failed: no address".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                format!("CONNECT {target} {outcome}")
            })
        })
        .collect();
    for attempt in attempts {
        match attempt.join() {
            Ok(line) => println!("{line}"),
            Err(_) => println!("CONNECT ? failed: the attempt panicked"),
        }
    }
}

fn dial(addr: &str) -> std::net::TcpStream {
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
    let stream =
        target.and_then(|t| std::net::TcpStream::connect_timeout(&t, Duration::from_secs(2)).ok());
    match stream {
        Some(s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
            s
        }
        None => {
            println!("CONNECT {addr} failed");
            std::process::exit(1);
        }
    }
}

fn pg(addr: &str, user: &str, database: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes()); // protocol 3.0
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let mut stream = dial(addr);
    let _ = stream.write_all(&msg);
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).unwrap_or(0);
    let reply = &reply[..n];
    let kind = reply.first().map(|b| *b as char).unwrap_or('-');
    // An ErrorResponse: fields of a type byte and a C string; M is the message.
    let mut message = String::new();
    if kind == 'E' && reply.len() > 5 {
        for field in reply[5..].split(|b| *b == 0) {
            if let Some((b'M', text)) = field.split_first() {
                message = String::from_utf8_lossy(text).into_owned();
            }
        }
    }
    println!("PG {kind} {message}");
}

fn send(addr: &str, texts: &[String]) {
    let mut stream = dial(addr);
    let mut got = Vec::new();
    for text in texts {
        let bytes = text.replace("\\r", "\r").replace("\\n", "\n");
        let _ = stream.write_all(bytes.as_bytes());
        std::thread::sleep(Duration::from_millis(300));
        let mut buf = vec![0u8; 65536];
        if let Ok(n) = stream.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&got)
        .replace('\r', "\\r")
        .replace('\n', "\\n");
    println!("REPLY {text}");
}

extern "C" {
    fn geteuid() -> u32;
    fn unshare(flags: i32) -> i32;
}

fn whoami() {
    // SAFETY: geteuid has no preconditions.
    println!("UID {}", unsafe { geteuid() });
    for (name, flag) in [("UNSHARE-USER", 0x1000_0000), ("UNSHARE-NET", 0x4000_0000)] {
        // SAFETY: unshare takes flags only; on success it changes only
        // this process's namespaces, and the process exits right after.
        let r = unsafe { unshare(flag) };
        let outcome = if r == 0 {
            "ok".to_owned()
        } else {
            format!("failed: {}", std::io::Error::last_os_error())
        };
        println!("{name} {outcome}");
    }
    for path in [
        "/app/toolbox",
        "/etc/resolv.conf",
        "/run/hangar/resources.json",
        "/proc/sysrq-trigger",
    ] {
        let outcome = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        println!("WRITE {path} {outcome}");
    }
}

/// A 32-bit system call (`int 0x80`, i386 getpid) from this 64-bit
/// process: the kernel's compat entry, which a machine's seccomp filter
/// does not allow.
fn compat() {
    #[cfg(target_arch = "x86_64")]
    {
        let ret: i64;
        // SAFETY: i386 getpid (20) takes no arguments and touches no memory;
        // the registers the 32-bit entry may clobber are declared.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") 20i64 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack)
            );
        }
        println!("COMPAT ok {ret}");
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("COMPAT not applicable");
}

/// Prints numbered 1 KiB lines at about 1 MiB a second, for ever: a
/// chatty app, for the log cap.
fn spam() {
    use std::io::Write;
    let pad = "x".repeat(1000);
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let _ = writeln!(out, "spam {i:010} {pad}");
        if i % 64 == 63 {
            let _ = out.flush();
            std::thread::sleep(std::time::Duration::from_millis(62));
        }
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
