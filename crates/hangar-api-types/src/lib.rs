//! The API's wire types: every request and answer body of Hangar's own API
//! (`/api/v1`, [`hangar`]) and of its Fly-compatible Machines API (`/v1`,
//! [`fly`]), shared by the server (which builds its answers from them and
//! its OpenAPI document from their schemas), the CLI and the tests (which
//! read answers back into them).
//!
//! Architecture Invariant: store rows never go to clients as they are; the
//! server maps each row to one of these types, so a renamed column cannot
//! change the contract, and a renamed field here fails to compile on both
//! sides instead of reading `null`. States are enums on both sides.

pub mod fly;
pub mod hangar;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error answer: `{"error": "..."}`, with a machine-readable
/// `status` where Fly's clients look for one (`name_taken`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and, for a 4xx, what to do about it.
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `{"ok": true}`: an action that has nothing else to say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OkBody {
    pub ok: bool,
}

impl OkBody {
    pub const YES: OkBody = OkBody { ok: true };
}
