//! What an API token may do: its scope.
//!
//! - `admin`: everything its org may do (the first token of an org, and
//!   tokens made before scopes existed).
//! - `read`: every read of its org's apps, builds and machines; no change.
//! - `deploy:<app>`: deploy, roll back and cancel builds of that one app,
//!   and read it; nothing of any other app.
//!
//! The API decides what each route needs ([`Need`]) and asks
//! [`Scope::allows`]; a refusal names the scope that was missing.

use std::fmt;
use std::str::FromStr;

use crate::name::AppName;

/// A token's scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything of the org.
    Admin,
    /// Every read of the org.
    Read,
    /// Deploy and read one app.
    Deploy(AppName),
}

/// What a request needs of its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// A read; of one app when the route names one.
    Read(Option<&'a str>),
    /// A deploy (or rollback, or build cancel) of one app.
    Deploy(&'a str),
    /// Anything else: the org's settings, tokens, machines, secrets.
    Admin,
}

impl Need<'_> {
    /// The narrowest scope that grants this, as the refusal names it.
    pub fn scope_name(&self) -> String {
        match self {
            Need::Read(None) => "read".to_owned(),
            Need::Read(Some(app)) => format!("read (or deploy:{app})"),
            Need::Deploy(app) => format!("deploy:{app}"),
            Need::Admin => "admin".to_owned(),
        }
    }
}

impl Scope {
    /// Whether a token of this scope may do what `need` says.
    pub fn allows(&self, need: Need<'_>) -> bool {
        match (self, need) {
            (Scope::Admin, _) => true,
            (Scope::Read, Need::Read(_)) => true,
            (Scope::Deploy(mine), Need::Read(Some(app)) | Need::Deploy(app)) => {
                mine.as_str() == app
            }
            _ => false,
        }
    }

    /// The one app this scope is limited to, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            Scope::Deploy(app) => Some(app.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Read => f.write_str("read"),
            Scope::Deploy(app) => write!(f, "deploy:{app}"),
        }
    }
}

/// A scope that is none of the three forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?}: use admin, read or deploy:APP")]
pub struct InvalidScope(pub String);

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(s: &str) -> Result<Scope, InvalidScope> {
        match s {
            "admin" => Ok(Scope::Admin),
            "read" => Ok(Scope::Read),
            _ => s
                .strip_prefix("deploy:")
                .and_then(|app| AppName::parse(app).ok())
                .map(Scope::Deploy)
                .ok_or_else(|| InvalidScope(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        for s in ["admin", "read", "deploy:web-1"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "Admin",
            "write",
            "deploy:",
            "deploy:Bad_Name",
            "deploy:a:b",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_scope_allows_what_it_says_and_nothing_more() {
        let web: Scope = "deploy:web".parse().unwrap();
        assert!(web.allows(Need::Deploy("web")));
        assert!(web.allows(Need::Read(Some("web"))));
        assert!(!web.allows(Need::Deploy("api")));
        assert!(!web.allows(Need::Read(Some("api"))));
        assert!(!web.allows(Need::Read(None)), "org-wide reads are not its");
        assert!(!web.allows(Need::Admin));

        assert!(Scope::Read.allows(Need::Read(None)));
        assert!(Scope::Read.allows(Need::Read(Some("api"))));
        assert!(!Scope::Read.allows(Need::Deploy("api")));
        assert!(!Scope::Read.allows(Need::Admin));

        for need in [Need::Admin, Need::Deploy("x"), Need::Read(None)] {
            assert!(Scope::Admin.allows(need));
        }
    }
}
