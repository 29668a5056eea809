//! App names. An app's name is the first label of its hostname
//! (`<app>.<domain>`), so it must be a valid DNS label.

use std::fmt;

/// The rule, worded for users: every rejection quotes it.
pub const APP_NAME_RULE: &str = "an app name is a DNS label: 1 to 63 characters, \
lowercase letters a-z, digits and '-', starting with a letter and not ending with '-'";

/// Whether `s` is an environment-variable-style name: ASCII letters,
/// digits and `_`, not empty, not starting with a digit. Machine `env` keys
/// and secret names follow this rule.
pub fn is_env_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A validated app name. Construct with [`AppName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(
    /// Always satisfies [`APP_NAME_RULE`].
    String,
);

/// Why a string is not an app name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid app name {name:?}: {APP_NAME_RULE}")]
pub struct InvalidAppName {
    /// The rejected input, echoed back so the user sees what was sent.
    pub name: String,
}

impl AppName {
    /// Validates `s` against [`APP_NAME_RULE`].
    pub fn parse(s: &str) -> Result<Self, InvalidAppName> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_lowercase()
            && bytes[bytes.len() - 1] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(AppName(s.to_owned()))
        } else {
            Err(InvalidAppName { name: s.to_owned() })
        }
    }

    /// Derives a name from a cargo package name (`my_app` → `my-app`), for
    /// `hangar deploy` without `--app`. The result is still validated.
    pub fn from_package(package: &str) -> Result<Self, InvalidAppName> {
        Self::parse(&package.to_ascii_lowercase().replace('_', "-"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello", "my-app-2", &"a".repeat(63)] {
            assert_eq!(
                AppName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "Hello",
            "2app",
            "-app",
            "app-",
            "my_app",
            "my.app",
            "app!",
            &"a".repeat(64),
        ] {
            let err = AppName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("DNS label"), "{err}");
        }
    }

    #[test]
    fn package_names_are_mapped() {
        assert_eq!(AppName::from_package("My_App").unwrap().as_str(), "my-app");
    }
}
