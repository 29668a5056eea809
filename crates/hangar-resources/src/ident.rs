//! The names an app's objects have on the servers: its Postgres role and
//! database, its Redis ACL user and key prefix, its NATS user and subject
//! prefix, the directory of its own Redis server.
//!
//! All are made from one [`ResourceKey`]: the app's immutable id
//! (`app_<16 hex digits>`) for everything provisioned now, never its name.
//! A name is reused once its app is deleted (by any org); an id never is.
//! So an app that takes a deleted app's name gets objects of its own, even
//! where dropping the old app's failed half-way.
//!
//! Resources provisioned before were named after the app's name. Their
//! names are recorded (the resource row's `name`, and the credentials
//! sealed with it), and Hangar keeps using, and in the end drops, exactly
//! what is recorded: they are never renamed. [`ResourceKey::parse`] reads
//! such a key back (an app name is a valid key).
//!
//! Every name is checked against what its server keeps, and refused with
//! [`IdentError`] when it would not fit: never cut short. (Postgres
//! silently truncates identifiers longer than 63 bytes, so a cut name
//! would name another app's database.) Names made from an id are short
//! by construction.

/// The longest identifier Postgres keeps (`NAMEDATALEN` - 1 bytes): DDL
/// truncates longer ones silently, and a bound `name` parameter that long
/// is refused.
pub const PG_IDENTIFIER_MAX: usize = 63;
/// The longest Redis ACL user name Hangar makes. (Redis itself sets no
/// limit; a bound keeps every admin command and ACL file line short.)
pub const REDIS_USER_MAX: usize = 128;
/// The longest NATS user name Hangar makes (the server sets no limit).
pub const NATS_USER_MAX: usize = 128;
/// The longest NATS subject prefix Hangar hands out: a subject under it
/// still fits in a protocol line of the gate (`nats_max_line`, 4 KiB).
pub const NATS_PREFIX_MAX: usize = 128;
/// The longest key: an app name (63, a DNS label) for resources made
/// before keys were ids; an id is 20 bytes.
pub const KEY_MAX: usize = 63;

/// A name that cannot be made, or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error(
        "the {what} {ident:?} would be {len} bytes, and {server} keeps at most {max}: Hangar \
         refuses it rather than cut it short"
    )]
    TooLong {
        what: &'static str,
        server: &'static str,
        ident: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{ident:?} is not a {what} Hangar makes (lowercase letters, digits, '_' and '-', \
         starting with a letter)"
    )]
    Invalid { what: &'static str, ident: String },
}

/// What an app's server-side names are made from (see the module docs):
/// lowercase ASCII letters, digits, `_` and `-`, starting with a letter,
/// at most [`KEY_MAX`] bytes. So it needs no quoting in Postgres DDL
/// (once `-` is `_`), Redis ACL rules, NATS subjects or a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey(String);

impl ResourceKey {
    /// The key of everything provisioned for the app whose id is `app_id`.
    /// Every name made from it is checked to fit, so the callers' `?` on
    /// them never fires for an id.
    pub fn of_app(app_id: &str) -> Result<ResourceKey, IdentError> {
        let key = Self::parse_as(app_id, "app id")?;
        key.postgres()?;
        key.redis_user()?;
        key.nats_user()?;
        key.pubsub_prefix()?;
        Ok(key)
    }

    /// A key as recorded (an app id, or an app name for resources made
    /// before keys were ids).
    pub fn parse(key: &str) -> Result<ResourceKey, IdentError> {
        Self::parse_as(key, "resource key")
    }

    fn parse_as(key: &str, what: &'static str) -> Result<ResourceKey, IdentError> {
        if key.len() > KEY_MAX {
            return Err(IdentError::TooLong {
                what,
                server: "Hangar",
                ident: key.to_owned(),
                len: key.len(),
                max: KEY_MAX,
            });
        }
        let ok = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(IdentError::Invalid {
                what,
                ident: key.to_owned(),
            });
        }
        Ok(ResourceKey(key.to_owned()))
    }

    /// The key a Redis user name ([`Self::redis_user`]) was made from.
    pub fn of_redis_user(user: &str) -> Result<ResourceKey, IdentError> {
        let key = user
            .strip_prefix("hangar_")
            .ok_or_else(|| IdentError::Invalid {
                what: "Redis user",
                ident: user.to_owned(),
            })?;
        Self::parse(key)
    }

    /// The key a subject prefix ([`Self::pubsub_prefix`]) was made from.
    pub fn of_pubsub_prefix(prefix: &str) -> Result<ResourceKey, IdentError> {
        let key = prefix
            .strip_prefix("hangar.")
            .and_then(|k| k.strip_suffix('.'))
            .ok_or_else(|| IdentError::Invalid {
                what: "subject prefix",
                ident: prefix.to_owned(),
            })?;
        Self::parse(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The role and database: `hangar_` + the key, `-` as `_` (27 bytes
    /// for an id).
    pub fn postgres(&self) -> Result<String, IdentError> {
        let name = format!("hangar_{}", self.0.replace('-', "_"));
        pg_identifier(&name)?;
        Ok(name)
    }

    /// The Redis ACL user: `hangar_` + the key.
    pub fn redis_user(&self) -> Result<String, IdentError> {
        fits(
            format!("hangar_{}", self.0),
            "Redis user",
            "Hangar",
            REDIS_USER_MAX,
        )
    }

    /// Every Redis key (and channel) the app may touch starts with this:
    /// the key and `:`. Keys never hold `*`, `?`, `[` or `\`, so it is a
    /// literal in an ACL pattern.
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.0)
    }

    /// The NATS user on Hangar's own server: `hangar_` + the key.
    pub fn nats_user(&self) -> Result<String, IdentError> {
        fits(
            format!("hangar_{}", self.0),
            "NATS user",
            "Hangar",
            NATS_USER_MAX,
        )
    }

    /// Every subject of the app starts with this: `hangar.<key>.` (a key
    /// holds no `.`, `*`, `>` or space, so it is one literal token).
    pub fn pubsub_prefix(&self) -> Result<String, IdentError> {
        fits(
            format!("hangar.{}.", self.0),
            "NATS subject prefix",
            "Hangar",
            NATS_PREFIX_MAX,
        )
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fits(
    name: String,
    what: &'static str,
    server: &'static str,
    max: usize,
) -> Result<String, IdentError> {
    if name.len() > max {
        return Err(IdentError::TooLong {
            what,
            server,
            len: name.len(),
            ident: name,
            max,
        });
    }
    Ok(name)
}

/// `name` as a role or database name Hangar makes: lowercase letters,
/// digits and `_`, at most [`PG_IDENTIFIER_MAX`] bytes, so it can be put
/// between double quotes in DDL (which takes no bind parameters) and
/// Postgres keeps it whole. Longer is [`IdentError::TooLong`], never cut.
pub fn pg_identifier(name: &str) -> Result<&str, IdentError> {
    if name.len() > PG_IDENTIFIER_MAX {
        return Err(IdentError::TooLong {
            what: "Postgres identifier",
            server: "Postgres",
            ident: name.to_owned(),
            len: name.len(),
            max: PG_IDENTIFIER_MAX,
        });
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(IdentError::Invalid {
            what: "Postgres identifier",
            ident: name.to_owned(),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_id_so_a_shared_name_prefix_shares_nothing() {
        // Two apps whose names differ only past byte 56: named after the
        // name, `hangar_<name>` of both would share its first 63 bytes, all
        // that Postgres keeps of an identifier.
        let prefix = "a".repeat(56);
        let (one, two) = (format!("{prefix}bbbbbbb"), format!("{prefix}ccccccc"));
        let by_name = |n: &str| format!("hangar_{n}");
        assert_eq!(by_name(&one)[..63], by_name(&two)[..63]);
        let ids = [
            hangar_core::id::new_id("app"),
            hangar_core::id::new_id("app"),
        ];
        let keys: Vec<ResourceKey> = ids
            .iter()
            .map(|id| ResourceKey::of_app(id).unwrap())
            .collect();
        let pg: Vec<String> = keys.iter().map(|k| k.postgres().unwrap()).collect();
        assert_ne!(
            pg[0], pg[1],
            "{one} and {two} get databases and roles of their own"
        );
        for (key, name) in keys.iter().zip(&pg) {
            assert!(name.len() <= PG_IDENTIFIER_MAX, "{name}");
            assert_eq!(name.len(), "hangar_app_0123456789abcdef".len());
            assert!(!name.contains(&prefix[..8]), "nothing of the name: {name}");
            assert!(pg_identifier(name).is_ok());
            // Redis and NATS names too, and none is a prefix of another's.
            assert_eq!(
                key.redis_user().unwrap(),
                format!("hangar_{}", key.as_str())
            );
            assert_eq!(key.redis_prefix(), format!("{}:", key.as_str()));
            assert_eq!(
                key.pubsub_prefix().unwrap(),
                format!("hangar.{}.", key.as_str())
            );
        }
        assert_ne!(keys[0].redis_prefix(), keys[1].redis_prefix());
        assert!(!keys[0].redis_prefix().starts_with(&keys[1].redis_prefix()));
        assert_ne!(keys[0].pubsub_prefix(), keys[1].pubsub_prefix());
        // The same id, the same names: provisioning is idempotent.
        assert_eq!(
            ResourceKey::of_app(&ids[0]).unwrap().postgres(),
            Ok(pg[0].clone())
        );
    }

    #[test]
    fn too_long_is_refused_with_its_length_never_cut() {
        // An identifier Postgres would truncate.
        let long = format!("hangar_{}", "a".repeat(57));
        assert_eq!(long.len(), 64);
        let err = pg_identifier(&long).unwrap_err();
        assert!(
            matches!(
                err,
                IdentError::TooLong {
                    len: 64,
                    max: 63,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("64 bytes"), "{err}");
        assert!(pg_identifier(&long[..63]).is_ok());
        // A legacy key (an app name) of 63 bytes: its Postgres name would
        // be 70 bytes: refused, not truncated.
        let key = ResourceKey::parse(&"b".repeat(63)).unwrap();
        assert!(matches!(
            key.postgres(),
            Err(IdentError::TooLong { len: 70, .. })
        ));
        // ...while its Redis and NATS names fit (what older Hangars made).
        assert_eq!(key.redis_user().unwrap().len(), 70);
        assert!(key.pubsub_prefix().is_ok());
        // Keys: bounded, and only what needs no quoting anywhere.
        assert!(matches!(
            ResourceKey::parse(&"c".repeat(64)),
            Err(IdentError::TooLong { .. })
        ));
        for bad in ["", "App", "1app", "a.b", "a*", "a b", "a:b", "a/b", "é"] {
            assert!(
                matches!(ResourceKey::parse(bad), Err(IdentError::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(pg_identifier("hangar_x\"; DROP").is_err());
    }

    #[test]
    fn recorded_names_give_their_key_back() {
        let key = ResourceKey::of_app("app_3f9a0c1d2e4b5a69").unwrap();
        let user = key.redis_user().unwrap();
        assert_eq!(ResourceKey::of_redis_user(&user), Ok(key.clone()));
        let prefix = key.pubsub_prefix().unwrap();
        assert_eq!(ResourceKey::of_pubsub_prefix(&prefix), Ok(key.clone()));
        // Made by name before: the name is the key.
        assert_eq!(
            ResourceKey::of_redis_user("hangar_todo").unwrap().as_str(),
            "todo"
        );
        assert_eq!(
            ResourceKey::of_pubsub_prefix("hangar.todo.")
                .unwrap()
                .as_str(),
            "todo"
        );
        assert!(ResourceKey::of_redis_user("todo").is_err());
        assert!(ResourceKey::of_pubsub_prefix("hangar.todo").is_err());
        // An id and a name never give the same Redis or NATS names: ids
        // hold '_', names never do.
        assert!(
            !ResourceKey::parse("app-3f9a0c1d2e4b5a69")
                .unwrap()
                .redis_user()
                .unwrap()
                .eq(&user)
        );
    }
}
