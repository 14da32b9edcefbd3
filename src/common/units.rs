//! Human-friendly sizes (`64MiB`, `1.5GB`, `4096`) and durations (`500ms`, `60s`, `5m`, `1h`,
//! Go's `1h30m` and `5m0s`) for the config files and flags. Durations are `humantime`'s
//! grammar, plus a bare number of seconds and one fractional unit (`1.5h`, `0.5s`) as Go's
//! `time.ParseDuration` takes them; the size grammar is a dozen lines, written here.

use serde::{Deserialize, Deserializer, de};
use std::time::Duration;

/// A byte count that deserializes from an integer or a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration that deserializes from a number of seconds or a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 4096, 64KiB, 64MiB, 1GB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{other}` is not a size unit (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((value * mult).round() as u64)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration (examples: 500ms, 30s, 5m, 1h30m)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite())
            .then(|| Duration::from_secs_f64(secs))
            .ok_or_else(bad);
    }
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(d);
    }
    // One fractional number with a unit, as Go writes `1.5h`.
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(value * scale))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Int(u64),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Int(n) => Ok(ByteSize(n)),
            NumOrText::Float(f) if f >= 0.0 => Ok(ByteSize(f as u64)),
            NumOrText::Float(_) => Err(de::Error::custom("a size cannot be negative")),
            NumOrText::Text(t) => parse_size(&t).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Int(n) => Ok(Span(Duration::from_secs(n))),
            NumOrText::Float(f) if f >= 0.0 => Ok(Span(Duration::from_secs_f64(f))),
            NumOrText::Float(_) => Err(de::Error::custom("a duration cannot be negative")),
            NumOrText::Text(t) => parse_duration(&t).map(Span).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 fortnights").is_err());
        // Go's time.Duration.String() forms, as Rin users pass them.
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("5m0s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h 30m").unwrap(), Duration::from_secs(9000));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
