//! Rin's command line, so a Rin user's scripts run unchanged: Go's flag spellings for
//! `rin-ship import` (one dash or two, `-name value` or `-name=value`, booleans as `-batch` or
//! `-batch=false`), Rin's short names (`-c`, `-b`, `-d`, `-v`), `-version`, and the binary
//! installed as `rin` (then `rin -config x -batch` is `rin-ship import ...`). The `RIN_<FLAG>`
//! variables are clap's `env` on each flag (`src/main.rs`); [`env_bool`] reads one where clap
//! does not parse (the Lambda `bootstrap`).
//!
//! Must never: touch anything after `--`, the value of a flag that takes one, or the command
//! line of another subcommand; read a boolean it cannot parse as false (a dry run must never
//! turn into a load).

use std::ffi::OsString;

/// Rin's flags that take a value, by each spelling (`-c` is clap's own short form already).
const VALUED: [(&str, &str); 2] = [
    ("config", "config"),
    ("max-execution-time", "max-execution-time"),
];

/// Rin's boolean flags, by each spelling, and their clap name.
const BOOLS: [(&str, &str); 5] = [
    ("batch", "batch"),
    ("b", "batch"),
    ("debug", "debug"),
    ("d", "debug"),
    ("dry-run", "dry-run"),
];

/// Rin's version flags: `rin-ship --version` answers them.
const VERSION: [&str; 2] = ["version", "v"];

/// Go's `strconv.ParseBool`: `Some(value)`, or `None` for anything else.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A boolean flag's value as `RIN_<FLAG>` may give it: Go's spellings, or true/false, yes/no,
/// on/off, y/n in any case; empty is false (as unset). Anything else is an error, never a
/// silent false: `RIN_DRY_RUN=ture` must not run a load. clap's parser for Rin's booleans.
pub fn parse_rin_bool(v: &str) -> Result<bool, String> {
    if v.is_empty() {
        return Ok(false);
    }
    parse_go_bool(v)
        .or_else(|| match v.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "y" | "yes" | "on" => Some(true),
            "false" | "f" | "0" | "n" | "no" | "off" => Some(false),
            _ => None,
        })
        .ok_or_else(|| format!("{v:?} is not a boolean (true or false)"))
}

/// A `RIN_<FLAG>` boolean from the environment, read as clap reads the others
/// ([`parse_rin_bool`]; unset is false).
#[cfg_attr(not(feature = "lambda"), allow(dead_code))]
pub fn env_bool(name: &str) -> Result<bool, String> {
    match std::env::var_os(name) {
        None => Ok(false),
        Some(v) => parse_rin_bool(&v.to_string_lossy()).map_err(|e| format!("{name}={e}")),
    }
}

/// Where the subcommand is: the first argument that is neither an option nor the value
/// after a long option (`rin-ship --log-format json import`).
fn subcommand_at(args: &[OsString]) -> Option<usize> {
    let mut after_long = false;
    for (i, a) in args.iter().enumerate().skip(1) {
        let s = a.to_str()?;
        if s.starts_with('-') {
            after_long = s.starts_with("--") && !s.contains('=');
        } else if std::mem::take(&mut after_long) {
            continue;
        } else {
            return Some(i);
        }
    }
    None
}

/// The command line with Rin's spellings of `import` in clap's form (see the module doc).
pub fn rin_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let invoked_as_rin = args.first().is_some_and(|a| {
        std::path::Path::new(a)
            .file_stem()
            .is_some_and(|n| n == "rin")
    });
    let at = match subcommand_at(&args) {
        Some(i) if args[i] == "import" => i,
        // `rin -config x -batch`: Rin's own command line, to the importer.
        _ if invoked_as_rin => {
            args.insert(1, "import".into());
            1
        }
        _ => return args,
    };
    let rest = args.split_off(at + 1);
    let mut skip_value = false;
    let mut rest = rest.into_iter();
    while let Some(arg) = rest.next() {
        let is_value = std::mem::take(&mut skip_value);
        let Some(s) = arg.to_str().filter(|_| !is_value) else {
            args.push(arg);
            continue;
        };
        if s == "--" {
            args.push(arg);
            args.extend(rest.by_ref());
            break;
        }
        let Some(flag) = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-'))
            .filter(|f| !f.is_empty())
        else {
            args.push(arg);
            continue;
        };
        let (name, value) = flag
            .split_once('=')
            .map_or((flag, None), |(n, v)| (n, Some(v)));
        if let Some(&(_, long)) = VALUED.iter().find(|(n, _)| *n == name) {
            skip_value = value.is_none();
            args.push(match value {
                None => format!("--{long}").into(),
                Some(v) => format!("--{long}={v}").into(),
            });
        } else if let Some(&(_, long)) = BOOLS.iter().find(|(n, _)| *n == name) {
            match value.map(parse_go_bool) {
                None | Some(Some(true)) => args.push(format!("--{long}").into()),
                Some(Some(false)) => {}
                // Not a boolean: clap refuses it, naming the flag.
                Some(None) => args.push(arg),
            }
        } else if VERSION.contains(&name) && value.is_none_or(|v| parse_go_bool(v) == Some(true)) {
            // Rin prints its version and exits, whatever else is given.
            return vec![args.swap_remove(0), "--version".into()];
        } else {
            // clap's short `-c`: its value is the next argument unless given with `=`.
            skip_value = s == "-c";
            args.push(arg);
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rin_flags(args.iter().map(Into::into))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rin_single_dash_flags() {
        assert_eq!(
            rewrite(&[
                "rin-ship",
                "import",
                "-config",
                "x.yaml",
                "-batch",
                "-debug",
                "-max-execution-time",
                "10m"
            ]),
            [
                "rin-ship",
                "import",
                "--config",
                "x.yaml",
                "--batch",
                "--debug",
                "--max-execution-time",
                "10m"
            ]
        );
        assert_eq!(
            rewrite(&[
                "p",
                "import",
                "-config=s3://b/k",
                "-max-execution-time=1h",
                "-batch=true"
            ]),
            [
                "p",
                "import",
                "--config=s3://b/k",
                "--max-execution-time=1h",
                "--batch"
            ]
        );
        assert_eq!(
            rewrite(&["p", "import", "-batch=false", "-debug=0", "-config", "c"]),
            ["p", "import", "--config", "c"]
        );
        assert_eq!(
            rewrite(&["p", "import", "-c", "c", "-dry-run", "k1", "k2"]),
            ["p", "import", "-c", "c", "--dry-run", "k1", "k2"]
        );
        // A flag's value, clap's own forms, `--` and other names are left alone.
        assert_eq!(
            rewrite(&["p", "import", "--config", "-batch", "-config", "-debug"]),
            ["p", "import", "--config", "-batch", "--config", "-debug"]
        );
        assert_eq!(
            rewrite(&["p", "import", "--batch", "-h", "-configx", "--", "-batch"]),
            ["p", "import", "--batch", "-h", "-configx", "--", "-batch"]
        );
        // Only `import`.
        assert_eq!(
            rewrite(&["p", "serve", "-config", "c"]),
            ["p", "serve", "-config", "c"]
        );
        assert_eq!(rewrite(&["p"]), ["p"]);
    }

    #[test]
    fn rin_short_flags_version_and_go_booleans() {
        assert_eq!(
            rewrite(&["p", "import", "-c", "-b", "-b", "-d", "-dry-run=T"]),
            ["p", "import", "-c", "-b", "--batch", "--debug", "--dry-run"]
        );
        assert_eq!(
            rewrite(&["p", "import", "-b=f", "--d=FALSE", "-dry-run=false", "-c=x"]),
            ["p", "import", "-c=x"]
        );
        // Not a boolean: left for clap to refuse.
        assert_eq!(
            rewrite(&["p", "import", "-dry-run=maybe"]),
            ["p", "import", "-dry-run=maybe"]
        );
        for v in ["-v", "-version", "--version", "-version=true"] {
            assert_eq!(
                rewrite(&["p", "import", "-config", "x", v, "-batch"]),
                ["p", "--version"]
            );
        }
        assert_eq!(
            rewrite(&["p", "import", "-config", "-v"]),
            ["p", "import", "--config", "-v"]
        );
        // Global options before the subcommand.
        assert_eq!(
            rewrite(&["p", "--log-format", "json", "import", "-b"]),
            ["p", "--log-format", "json", "import", "--batch"]
        );
        assert_eq!(
            rewrite(&["p", "--config", "import", "-b"]),
            ["p", "--config", "import", "-b"],
            "`import` as an option's value is not the subcommand"
        );
    }

    #[test]
    fn invoked_as_rin() {
        assert_eq!(
            rewrite(&["/usr/local/bin/rin", "-config", "c.yaml", "-batch"]),
            [
                "/usr/local/bin/rin",
                "import",
                "--config",
                "c.yaml",
                "--batch"
            ]
        );
        assert_eq!(
            rewrite(&["rin", "import", "-b"]),
            ["rin", "import", "--batch"]
        );
        assert_eq!(rewrite(&["rin", "-version"]), ["rin", "--version"]);
    }

    #[test]
    fn go_booleans_from_the_environment() {
        for v in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_go_bool(v), Some(true), "{v}");
        }
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("F"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
        for (v, want) in [("", false), ("yes", true), ("OFF", false), ("tRuE", true)] {
            assert_eq!(parse_rin_bool(v), Ok(want), "{v:?}");
        }
        for v in ["ture", "2", " true", "enabled"] {
            assert!(parse_rin_bool(v).is_err(), "{v:?}");
        }
        assert!(env_bool("RIN_SHIP_TEST_SURELY_UNSET_VARIABLE") == Ok(false));
    }
}
