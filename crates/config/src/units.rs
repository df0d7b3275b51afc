//! Sizes and durations as people write them: `512M`, `1.5G`, `30s`, `500ms`, `2m`.
//!
//! [`de`] deserializes them in place, so a configuration that holds a bad one is refused
//! when it is read, at the value's location.

use std::time::Duration;

/// A size or a duration that cannot be read. Each names the text as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The size's unit is not one of K, M, G, T (optionally with `B` or `iB`).
    #[error("unknown size unit {unit:?} (use K, M, G or T)")]
    SizeUnit {
        /// The size as written.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The size's number is not a number.
    #[error("{input:?} is not a size (e.g. 512M, 2G)")]
    NotASize {
        /// The size as written.
        input: String,
    },
    /// The duration's unit is not one of ms, s, m, min, h.
    #[error("unknown duration unit {unit:?} (use ms, s, m or h)")]
    DurationUnit {
        /// The duration as written.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The duration's number is not a number.
    #[error("{input:?} is not a duration (e.g. 30s, 500ms, 2m)")]
    NotADuration {
        /// The duration as written.
        input: String,
    },
    /// Zero, negative, or not finite.
    #[error("{input:?} must be positive")]
    NotPositive {
        /// The value as written.
        input: String,
    },
    /// More than a duration can hold.
    #[error("{input:?} is too long")]
    TooLong {
        /// The duration as written.
        input: String,
    },
}

/// Parse a size like `512M`, `1.5G`, `64k` or `1048576` (bytes; binary multiples).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => {
                    return Err(UnitError::SizeUnit {
                        input: s.to_owned(),
                        unit: s[i..].to_owned(),
                    });
                }
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| UnitError::NotASize {
        input: s.to_owned(),
    })?;
    if !(n.is_finite() && n > 0.0) {
        return Err(UnitError::NotPositive {
            input: s.to_owned(),
        });
    }
    Ok((n * mult as f64) as u64)
}

/// Parse a duration like `30s`, `500ms`, `2m`, `1h` or `10` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let n: f64 = s[..split]
        .trim()
        .parse()
        .map_err(|_| UnitError::NotADuration {
            input: s.to_owned(),
        })?;
    let secs = match &s[split..] {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(UnitError::DurationUnit {
                input: s.to_owned(),
                unit: u.to_owned(),
            });
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(UnitError::NotPositive {
            input: s.to_owned(),
        });
    }
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError::TooLong {
        input: s.to_owned(),
    })
}

/// Serde adapters: a duration written as a string (`"30m"`) or a whole number of seconds.
pub mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Seconds(u64),
    }

    /// `#[serde(default, deserialize_with = "units::de::duration")]` for an
    /// `Option<Duration>`: `"30m"`, `"500ms"`, `"10"` or `10` (seconds).
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = match Written::deserialize(d) {
            Ok(Written::Text(t)) => t,
            Ok(Written::Seconds(n)) => n.to_string(),
            Err(_) => {
                return Err(D::Error::custom(
                    "expected a duration such as \"30s\", \"500ms\", \"2m\" or \"1h\"",
                ));
            }
        };
        super::parse_duration(&text)
            .map(Some)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(
            parse_size("-1M").is_err() && parse_size("x").is_err() && parse_size("12Q").is_err()
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("10y").is_err());
    }

    #[test]
    fn errors_are_typed_and_name_what_was_written() {
        assert_eq!(
            parse_duration("10 parsecs"),
            Err(UnitError::DurationUnit {
                input: "10 parsecs".into(),
                unit: "parsecs".into()
            })
        );
        assert_eq!(
            parse_duration("10 parsecs").unwrap_err().to_string(),
            "unknown duration unit \"parsecs\" (use ms, s, m or h)"
        );
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            "unknown size unit \"Q\" (use K, M, G or T)"
        );
        assert_eq!(
            parse_size("0"),
            Err(UnitError::NotPositive { input: "0".into() })
        );
        // Finite but beyond what a Duration holds: refused, not a panic.
        let long = format!("{}h", "9".repeat(30));
        assert_eq!(
            parse_duration(&long),
            Err(UnitError::TooLong {
                input: long.clone()
            })
        );
    }
}
