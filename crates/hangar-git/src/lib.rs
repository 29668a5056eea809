//! Hangar's git side, without the platform: forge webhooks (`hook`:
//! signatures checked before parsing, events, delivery ids, pushes) and
//! an app's repository (`repo`: a bare mirror fetched with the `git` CLI,
//! confined to http(s), and one commit's source as a `.tar.gz`). What a
//! push does to an app lives in `hangar-api`'s `git` module.

pub mod hook;
pub mod repo;

pub use hook::{Forge, HookError, PrAction, PullRequest, Push};
pub use repo::{GitConfig, GitError, Mirror};
