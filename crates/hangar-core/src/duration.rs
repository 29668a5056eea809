//! Durations a tenant writes (hangar.toml, the Machines API): one parser
//! and one set of bounds for both.
//!
//! Parsing never panics: every value is finite and checked as it is summed
//! (`"1e20"`, `"inf"` and `"NaN"` are refused, where
//! `Duration::from_secs_f64` would panic). Every field has an upper bound
//! ([`Bounds`]), so a tenant's duration can never make Hangar wait for a
//! year.

use std::time::Duration;

/// The longest of any timeout, interval or idle time a tenant sets.
pub const MAX_TENANT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The longest stop grace period (Fly caps `stop_config.timeout` the same).
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(5 * 60);

/// The range a field's duration must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

impl Bounds {
    /// `min` to [`MAX_TENANT_DURATION`].
    pub const fn at_least(min: Duration) -> Bounds {
        Bounds {
            min,
            max: MAX_TENANT_DURATION,
        }
    }

    /// Bounds of a stop grace period: 0 to [`MAX_STOP_GRACE`].
    pub const STOP_GRACE: Bounds = Bounds {
        min: Duration::ZERO,
        max: MAX_STOP_GRACE,
    };

    /// `Ok` inside the bounds, else what the value must be (for a message
    /// that names the key).
    pub fn check(&self, d: Duration) -> Result<Duration, String> {
        if d < self.min || d > self.max {
            return Err(format!(
                "must be {} to {}, not {}",
                format(self.min),
                format(self.max),
                format(d)
            ));
        }
        Ok(d)
    }

    /// `d` moved into the bounds: for values stored before the bounds
    /// existed, so no old row can make Hangar wait longer than `max`.
    pub fn clamp(&self, d: Duration) -> Duration {
        d.clamp(self.min, self.max)
    }
}

/// Go-style durations as Fly writes them: `"10s"`, `"1m30s"`, `"500ms"`,
/// `"2h"`, `"1.5s"`; a bare number is seconds. `None` for anything else,
/// negative, not finite or past about 584 years.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return seconds(s.parse().ok()?);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add(seconds(n * unit)?)?;
    }
    Some(total)
}

/// A number of seconds, if finite, non-negative and representable.
pub fn seconds(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Formats a duration the way [`parse`] reads it (`"300ms"`, `"5m"`, `"1h"`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_seconds() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse("250us"), Some(Duration::from_micros(250)));
    }

    #[test]
    fn hostile_values_are_refused_never_a_panic() {
        for s in [
            "1e20",
            "inf",
            "-inf",
            "NaN",
            "infs",
            "-1s",
            "1e400",
            "",
            "s",
            "10x",
            "1..2s",
            "99999999999999999999h",
            "5m-1s",
            ".",
            "1s1",
            "Infinity",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
        assert_eq!(seconds(f64::INFINITY), None);
        assert_eq!(seconds(f64::NAN), None);
        assert_eq!(seconds(1e300), None);
    }

    #[test]
    fn bounds_name_the_range() {
        let b = Bounds::at_least(Duration::from_secs(1));
        assert!(b.check(Duration::from_secs(1)).is_ok());
        assert_eq!(
            b.check(Duration::from_secs(87600 * 3600)).unwrap_err(),
            "must be 1s to 24h, not 87600h"
        );
        assert_eq!(
            Bounds::STOP_GRACE.clamp(Duration::from_secs(87600 * 3600)),
            MAX_STOP_GRACE
        );
        assert_eq!(format(Duration::from_millis(300)), "300ms");
        assert_eq!(format(Duration::from_secs(300)), "5m");
    }
}
