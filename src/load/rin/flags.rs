//! Rin's command line: Rin's long flags use Go's single dash (`-config x`, `-config=x`,
//! `-batch`, `-batch=false`); for `rin-ship import`, these exact names become clap's `--`
//! form, so a Rin user's scripts run unchanged.

/// Rin's long flags use Go's single dash (`-config x`, `-config=x`, `-batch`, `-batch=false`);
/// for `import`, these exact names become clap's `--` form. Nothing after `--` is touched, nor
/// the value of a flag that takes one.
pub fn rin_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const VALUED: [&str; 2] = ["config", "max-execution-time"];
    const BOOLS: [&str; 2] = ["batch", "debug"];
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some("import") {
        return args;
    }
    let rest = args.split_off(2);
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
        let long = s.strip_prefix("--").or_else(|| s.strip_prefix('-'));
        let (name, value) = match long {
            Some(l) => l.split_once('=').map_or((l, None), |(n, v)| (n, Some(v))),
            None => (s, None),
        };
        if s.starts_with("--") || long.is_none() {
            // clap's own form: only note whether the next argument is this flag's value.
            skip_value = value.is_none() && (VALUED.contains(&name) || s == "-c");
            args.push(arg);
        } else if VALUED.contains(&name) {
            skip_value = value.is_none();
            args.push(format!("--{}", s.trim_start_matches('-')).into());
        } else if BOOLS.contains(&name) {
            // Go's strconv.ParseBool spellings.
            match value {
                None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => {
                    args.push(format!("--{name}").into())
                }
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => {}
                Some(_) => args.push(format!("-{s}").into()),
            }
        } else if name == "dry-run" && value.is_none() {
            args.push("--dry-run".into());
        } else {
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
}
