//! The `hangar` binary's library: everything the CLI and the `up` role do,
//! kept out of `main.rs` so integration tests can drive the same client.
//!
//! Layout:
//! - [`config`]: the CLI's config file (API URL and token).
//! - [`client`]: a small HTTP client for Hangar's API.
//! - [`pack`]: packing a cargo project into a `.tar.gz` (respects .gitignore).
//! - [`up`]: `hangar up`, which wires every role into one process.
//! - [`secrets_file`]: a project's `Secrets.toml`.
//! - [`domains`]: `hangar domains`.
//! - [`tokens`]: `hangar tokens` and `hangar audit`.
//! - [`commands`]: the other subcommands.
//!
//! This crate is thin: it parses arguments and wires the library crates.

pub mod client;
pub mod commands;
pub mod config;
pub mod domains;
pub mod git;
pub mod pack;
pub mod run;
pub mod run_dir;
pub mod runtime_src;
pub mod secrets_file;
pub mod tls_client;
pub mod tls_up;
pub mod tokens;
pub mod up;
