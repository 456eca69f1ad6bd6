//! Durations as operators write them: `90s`, `15m`, `48h`, `30d`, `1h30m`, or a plain number
//! of seconds. The same syntax serves the configuration and the API's `ttl` fields.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A whole number of seconds, parsed from `1h30m`-style text or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds(pub u64);

impl Seconds {
    /// Parses `90`, `90s`, `15m`, `48h`, `30d` and concatenations such as `1h30m`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || {
            format!(
                "{text:?} is not a duration: use seconds (3600) or units s, m, h, d (\"1h30m\", \"720h\")"
            )
        };
        if text.is_empty() {
            return Err(invalid());
        }
        if let Ok(seconds) = text.parse::<u64>() {
            return Ok(Seconds(seconds));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for ch in text.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(invalid()),
            };
            let value: u64 = digits.parse().map_err(|_| invalid())?;
            digits.clear();
            total = value
                .checked_mul(unit)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(invalid)?;
        }
        if !digits.is_empty() {
            return Err(invalid());
        }
        Ok(Seconds(total))
    }

    /// As a [`Duration`].
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s != 0 && s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(seconds) => Ok(Seconds(seconds)),
            Raw::Text(text) => Seconds::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_and_refused_forms() {
        for (text, seconds) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("48h", 172_800),
            ("30d", 2_592_000),
            ("1h30m", 5400),
        ] {
            assert_eq!(Seconds::parse(text), Ok(Seconds(seconds)), "{text}");
        }
        for bad in [
            "",
            "h",
            "1x",
            "1h30",
            "-5s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(Seconds::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Seconds(5400).to_string(), "90m");
        assert_eq!(Seconds(172_800).to_string(), "2d");
    }
}
