//! Human-friendly durations (`5m`, `30s`, `800ms`, `72h`, `1h30m`).
//!
//! Pipeline files are written by people, so timeouts read like `5m` rather
//! than a number of seconds. A tiny parser keeps us free of another
//! dependency; the grammar is one or more `<digits><unit>` groups with the
//! units `ms`, `s`, `m`, `h` and `d`.

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (write e.g. `30s`, `5m`, `72h`)")]
    Empty,
    #[error("`{0}` has no unit (write e.g. `{0}s` or `{0}m`; units: ms, s, m, h, d)")]
    MissingUnit(String),
    #[error("unknown duration unit `{0}` (units: ms, s, m, h, d)")]
    UnknownUnit(String),
    #[error("invalid duration `{0}` (write e.g. `30s`, `5m`, `1h30m`, `800ms`)")]
    Invalid(String),
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

/// Parses `5m`, `30s`, `800ms`, `72h`, `2d` and sums like `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::MissingUnit(s.to_owned()));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Invalid(s.to_owned()));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(DurationError::Invalid(s.to_owned()));
        }
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = number
            .parse()
            .map_err(|_| DurationError::Overflow(s.to_owned()))?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(DurationError::UnknownUnit(other.to_owned())),
        };
        let millis = n
            .checked_mul(millis_per_unit)
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration in the same notation `parse_duration` reads, so a
/// definition serialized back (e.g. by the API) round-trips.
pub fn format_duration(d: Duration) -> String {
    let mut millis = d.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let n = millis / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            millis %= size;
        }
    }
    out
}

/// Displays a duration as `format_duration` does.
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// `#[serde(with = "duration::serde_duration")]` for `Duration` fields.
pub(crate) mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(de::Error::custom)
    }
}

/// `#[serde(default, with = "duration::serde_opt_duration")]` for
/// `Option<Duration>` fields.
pub(crate) mod serde_opt_duration {
    use super::{format_duration, parse_duration};
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_duration(&text).map(Some).map_err(de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("800ms"), Ok(Duration::from_millis(800)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn parses_compound() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Ok(Duration::from_millis(90_500))
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("30"),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert_eq!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit("x".into()))
        );
        assert_eq!(
            parse_duration("5 m"),
            Err(DurationError::Invalid("5 m".into()))
        );
        assert_eq!(
            parse_duration("m5"),
            Err(DurationError::Invalid("m5".into()))
        );
        assert_eq!(
            parse_duration("1.5h"),
            Err(DurationError::Invalid("1.5h".into()))
        );
        assert_eq!(
            parse_duration("-5s"),
            Err(DurationError::Invalid("-5s".into()))
        );
        assert_eq!(
            parse_duration("5min"),
            Err(DurationError::UnknownUnit("min".into()))
        );
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("9999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["5m", "30s", "800ms", "3d", "1h30m", "1m30s500ms", "0s"] {
            let d = parse_duration(text).expect("valid");
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(72 * 3600)), "3d");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1s500ms"
        );
    }
}
