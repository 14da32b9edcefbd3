//! Log lines: where they go (stderr), which are written (a filter: `--log-level` or
//! `RIN_SHIP_LOG`, default `info`) and how (`--log-format text|json` or `RIN_SHIP_LOG_FORMAT`,
//! default `text`). Owns the parsing of both; it must never start with a filter it could not
//! read (a typo would otherwise hide every line without a word), and never write to stdout,
//! which belongs to the commands' output (`query` rows, `import`'s summary line).

use anyhow::{Result, anyhow};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields, for
    /// log collectors (Kubernetes, journald, CloudWatch).
    Json,
}

/// What the command line and the environment say about logging.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    /// A level (`debug`) or `tracing` directives (`info,rin_ship=debug`); `None`: `info`.
    pub filter: Option<String>,
    /// `None`: text, unless the filter names a format (`RIN_SHIP_LOG=json`).
    pub format: Option<LogFormat>,
    /// `import --debug` (Rin's `-debug`): rin-ship's own debug lines on top of the filter.
    pub debug: bool,
}

impl LogSettings {
    /// From the environment only (`RIN_SHIP_LOG`, `RIN_SHIP_LOG_FORMAT`): for the Lambda
    /// `bootstrap`, which gets no command line.
    #[cfg_attr(not(feature = "lambda"), allow(dead_code))]
    pub fn from_env(debug: bool) -> Result<LogSettings> {
        let format =
            match std::env::var("RIN_SHIP_LOG_FORMAT") {
                Ok(v) if !v.is_empty() => Some(parse_format(&v).ok_or_else(|| {
                    anyhow!("RIN_SHIP_LOG_FORMAT={v:?}: expected `text` or `json`")
                })?),
                _ => None,
            };
        Ok(LogSettings {
            filter: std::env::var("RIN_SHIP_LOG").ok(),
            format,
            debug,
        })
    }

    /// The filter and the format to run with; an error says what to write instead.
    pub fn resolve(&self) -> Result<(EnvFilter, LogFormat)> {
        let raw = self.filter.as_deref().unwrap_or("").trim();
        let mut format = self.format;
        let mut directives = Vec::new();
        for d in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            // `RIN_SHIP_LOG=json` is a format, not a target named `json` (which would hide
            // every other line).
            if let Some(f) = parse_format(d) {
                format.get_or_insert(f);
                continue;
            }
            check_directive(raw, d)?;
            directives.push(d);
        }
        let text = if directives.is_empty() {
            "info".to_string()
        } else {
            directives.join(",")
        };
        let mut filter = EnvFilter::builder()
            .parse(&text)
            .map_err(|e| bad_filter(raw, &e.to_string()))?;
        if self.debug {
            filter = filter.add_directive("rin_ship=debug".parse().expect("a valid directive"));
        }
        Ok((filter, format.unwrap_or_default()))
    }
}

fn parse_format(s: &str) -> Option<LogFormat> {
    match s.to_ascii_lowercase().as_str() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A bare word must be a level: `tracing` would read `warning` or `verbose` as the name of a
/// module to log alone, and every other line would vanish.
fn check_directive(raw: &str, d: &str) -> Result<()> {
    let bare = !d.contains('=') && !d.contains('[') && !d.contains("::");
    let word = d.to_ascii_lowercase();
    if !bare || LEVELS.contains(&word.as_str()) {
        return Ok(());
    }
    let meant = match word.as_str() {
        "warning" => Some("warn"),
        "err" | "fatal" | "critical" => Some("error"),
        "information" | "notice" => Some("info"),
        "verbose" => Some("debug"),
        "all" => Some("trace"),
        "none" | "quiet" => Some("off"),
        _ => None,
    };
    Err(bad_filter(
        raw,
        &match meant {
            Some(level) => format!("`{d}` is not a level: did you mean `{level}`?"),
            None => format!(
                "`{d}` is not a level; to set one module's level write `{d}=debug` (module=level)"
            ),
        },
    ))
}

fn bad_filter(raw: &str, why: &str) -> anyhow::Error {
    anyhow!(
        "invalid log filter {raw:?} (--log-level or RIN_SHIP_LOG): {why}; write a level \
         ({}) or directives such as `info,rin_ship=debug`; for JSON lines use --log-format json \
         or RIN_SHIP_LOG_FORMAT=json",
        LEVELS.join(", ")
    )
}

/// Installs the process's logger, writing through `writer` (which must end up on stderr).
pub fn init_to<W>(settings: &LogSettings, writer: W) -> Result<()>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, format) = settings.resolve()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(filter: &str) -> LogSettings {
        LogSettings {
            filter: Some(filter.into()),
            ..LogSettings::default()
        }
    }

    #[test]
    fn a_format_in_the_filter_is_the_format() {
        let (filter, format) = settings("json").resolve().unwrap();
        assert_eq!(format, LogFormat::Json);
        assert_eq!(filter.to_string(), "info");
        let (filter, format) = settings("debug,json").resolve().unwrap();
        assert_eq!(
            (filter.to_string().as_str(), format),
            ("debug", LogFormat::Json)
        );
        // An explicit --log-format wins.
        let s = LogSettings {
            format: Some(LogFormat::Text),
            ..settings("json")
        };
        assert_eq!(s.resolve().unwrap().1, LogFormat::Text);
        assert_eq!(LogSettings::default().resolve().unwrap().1, LogFormat::Text);
    }

    #[test]
    fn bad_filters_are_refused_with_what_to_write() {
        for bad in [
            "bogus[",
            "warning",
            "verbose,rin_ship=debug",
            "rin_ship=loud",
        ] {
            let e = settings(bad).resolve().unwrap_err().to_string();
            assert!(
                e.contains("RIN_SHIP_LOG") && e.contains("info,rin_ship=debug"),
                "{bad}: {e}"
            );
        }
        for good in [
            "info",
            "WARN",
            "rin_ship=debug",
            "info,hyper=warn",
            "off",
            "",
        ] {
            settings(good).resolve().unwrap();
        }
    }
}
