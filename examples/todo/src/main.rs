//! A to-do list on Postgres, with a greeting kept as a secret. Everything
//! it needs is declared on `main`; Hangar provisions it at deploy.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hangar_runtime::SecretStore;
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

#[hangar_runtime::main]
async fn main(
    #[hangar_runtime::Postgres] db: PgPool,
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
    Ok(Router::new()
        .route("/", get(|| async { "todo: GET/POST /todos\n" }))
        .route("/greeting", get(move || async move { greeting }))
        .route("/todos", get(list).post(create))
        .with_state(db))
}

async fn list(State(db): State<PgPool>) -> Result<Json<Vec<Todo>>, (StatusCode, String)> {
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
    State(db): State<PgPool>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), (StatusCode, String)> {
    if new.title.trim().is_empty() {
        return Err((StatusCode::BAD_REQUEST, "title must not be empty\n".into()));
    }
    let (id,): (i64,) = sqlx::query_as("INSERT INTO todos (title) VALUES ($1) RETURNING id")
        .bind(&new.title)
        .fetch_one(&db)
        .await
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(Todo {
            id,
            title: new.title,
            done: false,
        }),
    ))
}

fn internal(e: sqlx::Error) -> (StatusCode, String) {
    eprintln!("todo: database error: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, "database error\n".into())
}
