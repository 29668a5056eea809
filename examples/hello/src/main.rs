//! The smallest app Hangar deploys in its tests: one route that says hello,
//! bound to `$PORT`, shutting down cleanly on SIGTERM.

use axum::{routing::get, Router};

/// The body the end-to-end tests look for; a redeploy test edits this line.
const GREETING: &str = "Hello from Hangar!";

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let app = Router::new()
        .route("/", get(|| async { format!("{GREETING}\n") }))
        .route("/healthz", get(|| async { "ok\n" }))
        // Which machine answered, for the tests that balance over several.
        .route("/machine", get(|| async { machine_id() }))
        // A request that takes MS milliseconds (at most 30 s), and says in
        // the log when it ends: the rollout tests check that a machine is
        // told to stop only after its requests in flight have ended.
        .route("/slow/{ms}", get(slow));
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot bind port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello: listening on port {port}");
    let shutdown = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        println!("hello: SIGTERM received, shutting down");
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("hello: server error: {e}");
        std::process::exit(1);
    }
}

async fn slow(axum::extract::Path(ms): axum::extract::Path<u64>) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(ms.min(30_000))).await;
    println!("hello: slow request of {ms} ms done");
    format!("slow {ms}\n")
}

/// `$FLY_MACHINE_ID` (set by Hangar), or "unknown", and a newline.
fn machine_id() -> String {
    let id = std::env::var("FLY_MACHINE_ID").unwrap_or_else(|_| "unknown".into());
    format!("{id}\n")
}
