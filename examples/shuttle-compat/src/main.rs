//! A guestbook written for Shuttle: `#[shuttle_runtime::main]`, a shared
//! Postgres database and Secrets.toml. `hangar deploy` runs it unchanged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shuttle_runtime::SecretStore;
use sqlx::PgPool;

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    greeting: String,
}

#[derive(Deserialize)]
struct NewEntry {
    name: String,
}

#[derive(Serialize)]
struct Entry {
    id: i32,
    name: String,
}

#[shuttle_runtime::main]
async fn main(
    #[shuttle_shared_db::Postgres] pool: PgPool,
    #[shuttle_runtime::Secrets] secrets: SecretStore,
) -> shuttle_axum::ShuttleAxum {
    sqlx::query("CREATE TABLE IF NOT EXISTS guests (id SERIAL PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .map_err(shuttle_runtime::CustomError::new)?;
    let greeting = secrets
        .get("GREETING")
        .unwrap_or_else(|| "no greeting".to_owned());
    let router = Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>| async move { s.greeting }),
        )
        .route("/guests", get(list).post(sign))
        .with_state(AppState { pool, greeting });
    Ok(router.into())
}

async fn list(State(s): State<AppState>) -> Result<Json<Vec<Entry>>, StatusCode> {
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, name FROM guests ORDER BY id")
        .fetch_all(&s.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name)| Entry { id, name })
            .collect(),
    ))
}

async fn sign(
    State(s): State<AppState>,
    Json(new): Json<NewEntry>,
) -> Result<(StatusCode, Json<Entry>), StatusCode> {
    if new.name.trim().is_empty() {
        return Err(StatusCode::BAD_REQUEST);
    }
    let (id,): (i32,) = sqlx::query_as("INSERT INTO guests (name) VALUES ($1) RETURNING id")
        .bind(&new.name)
        .fetch_one(&s.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((StatusCode::CREATED, Json(Entry { id, name: new.name })))
}
