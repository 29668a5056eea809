//! The app of examples/hostile-build: harmless once built. Its build
//! script (build.rs) is what the build-sandbox tests are about; this only
//! answers on `$PORT` (default 8080) so a deploy can complete.

use std::io::{Read, Write};

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match std::net::TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hostile-build: cannot bind {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hostile-build: listening on port {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nharmless\n",
            );
        });
    }
}
