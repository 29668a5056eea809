//! Lifecycle states, stored as lowercase strings and sent as such over the API.

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s { $($s => Ok($name::$variant),)+ _ => Err(UnknownState(s.to_owned())) }
            }
        }
    };
}

/// A stored state string that this version does not know (a newer schema?).
#[derive(Debug, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

string_enum!(
    /// Where a build is in the durable queue.
    BuildStatus {
        /// Waiting for the builder.
        Queued => "queued",
        /// Claimed by the builder; on restart it is re-queued or failed.
        Building => "building",
        /// An image exists and a release was created.
        Succeeded => "succeeded",
        /// Terminal; the reason is stored with it.
        Failed => "failed",
        /// Terminal: a newer build of the same app was queued before this
        /// one started; the reason names the newer build.
        Superseded => "superseded",
        /// Terminal: cancelled by its org while queued or building.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Where a release is in its rollout.
    ReleaseStatus {
        /// Created by a successful build, not yet rolled out.
        Pending => "pending",
        /// Its machines are starting and being checked.
        Deploying => "deploying",
        /// Serving traffic.
        Active => "active",
        /// Replaced by a newer release.
        Superseded => "superseded",
        /// Never served; the reason is stored with it.
        Failed => "failed",
    }
);

string_enum!(
    /// What became of a commit Hangar heard of (a push, a poll, `hangar
    /// git deploy`); once `built`, its build and release say the rest.
    CommitState {
        /// Heard of; being fetched and checked.
        Received => "received",
        /// Not deployed on purpose: another branch, or no change under the
        /// connection's path.
        Ignored => "ignored",
        /// A newer commit of the branch is deployed instead.
        Superseded => "superseded",
        /// Its source was fetched and a build queued.
        Built => "built",
        /// Its source could not be fetched or packed (the reason is kept).
        Failed => "failed",
    }
);

string_enum!(
    /// Machine states, named as Fly's Machines API names them.
    MachineState {
        Created => "created",
        Starting => "starting",
        Started => "started",
        Stopping => "stopping",
        Stopped => "stopped",
        Suspending => "suspending",
        Suspended => "suspended",
        Destroying => "destroying",
        Destroyed => "destroyed",
        Failed => "failed",
    }
);

impl BuildStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Building)
    }
}

impl ReleaseStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, ReleaseStatus::Pending | ReleaseStatus::Deploying)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_strings() {
        for s in [
            "queued",
            "building",
            "succeeded",
            "failed",
            "superseded",
            "cancelled",
        ] {
            assert_eq!(s.parse::<BuildStatus>().unwrap().as_str(), s);
        }
        assert!("bogus".parse::<MachineState>().is_err());
        assert_eq!(
            serde_json::to_string(&ReleaseStatus::Active).unwrap(),
            "\"active\""
        );
    }
}
