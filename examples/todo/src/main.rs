//! A to-do list on Postgres, with a greeting kept as a secret, a view
//! counter in the cache (Redis) and an event per new to-do (NATS).
//! Everything it needs is declared on `main`; Hangar provisions it at
//! deploy, and `hangar run` gives it local stand-ins.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hangar_runtime::{Cache, PubSub, SecretStore};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Serialize)]
struct Todo {
    id: i64,
    title: String,
    done: bool,
}

#[derive(Deserialize)]
struct NewTodo {
    title: String,
}

#[derive(Clone)]
struct App {
    db: PgPool,
    cache: Arc<dyn Cache>,
    events: Arc<dyn PubSub>,
}

#[hangar_runtime::main]
async fn main(
    #[hangar_runtime::Postgres] db: PgPool,
    #[hangar_runtime::Redis] cache: Arc<dyn Cache>,
    #[hangar_runtime::PubSub] events: Arc<dyn PubSub>,
    #[hangar_runtime::Secrets] secrets: SecretStore,
) -> hangar_runtime::Result<Router> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS todos (
             id BIGSERIAL PRIMARY KEY,
             title TEXT NOT NULL,
             done BOOLEAN NOT NULL DEFAULT false
         )",
    )
    .execute(&db)
    .await?;
    let greeting = secrets
        .get("GREETING")
        .unwrap_or_else(|| "no greeting set".to_owned());
    // Every machine counts the "created" events it hears in the shared
    // cache; with one machine the count equals the to-dos created.
    let mut created = events.subscribe("todos.created").await?;
    let counter = cache.clone();
    tokio::spawn(async move {
        while created.next().await.is_some() {
            if let Err(e) = counter.incr("created_events", 1).await {
                eprintln!("todo: counting an event: {e}");
            }
        }
    });
    Ok(Router::new()
        .route("/", get(|| async { "todo: GET/POST /todos, GET /stats\n" }))
        .route("/greeting", get(move || async move { greeting }))
        .route("/todos", get(list).post(create))
        .route("/stats", get(stats))
        .with_state(App { db, cache, events }))
}

#[derive(Serialize)]
struct Stats {
    views: i64,
    created_events: i64,
}

async fn stats(State(app): State<App>) -> Result<Json<Stats>, (StatusCode, String)> {
    let read = |key: &'static str| {
        let cache = app.cache.clone();
        async move {
            let v = cache.get(key).await.map_err(cache_err)?;
            Ok::<i64, (StatusCode, String)>(
                v.and_then(|b| String::from_utf8(b).ok()?.parse().ok())
                    .unwrap_or(0),
            )
        }
    };
    Ok(Json(Stats {
        views: read("views").await?,
        created_events: read("created_events").await?,
    }))
}

async fn list(State(app): State<App>) -> Result<Json<Vec<Todo>>, (StatusCode, String)> {
    app.cache.incr("views", 1).await.map_err(cache_err)?;
    let db = app.db;
    let rows: Vec<(i64, String, bool)> =
        sqlx::query_as("SELECT id, title, done FROM todos ORDER BY id")
            .fetch_all(&db)
            .await
            .map_err(internal)?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, title, done)| Todo { id, title, done })
            .collect(),
    ))
}

async fn create(
    State(app): State<App>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), (StatusCode, String)> {
    if new.title.trim().is_empty() {
        return Err((StatusCode::BAD_REQUEST, "title must not be empty\n".into()));
    }
    let (id,): (i64,) = sqlx::query_as("INSERT INTO todos (title) VALUES ($1) RETURNING id")
        .bind(&new.title)
        .fetch_one(&app.db)
        .await
        .map_err(internal)?;
    if let Err(e) = app
        .events
        .publish("todos.created", id.to_string().as_bytes())
        .await
    {
        eprintln!("todo: publishing todos.created: {e}");
    }
    Ok((
        StatusCode::CREATED,
        Json(Todo {
            id,
            title: new.title,
            done: false,
        }),
    ))
}

fn cache_err(e: hangar_runtime::Error) -> (StatusCode, String) {
    eprintln!("todo: cache error: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, "cache error\n".into())
}

fn internal(e: sqlx::Error) -> (StatusCode, String) {
    eprintln!("todo: database error: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, "database error\n".into())
}
