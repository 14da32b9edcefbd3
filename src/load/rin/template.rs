//! Text substitution in a Rin config: kayac/go-config's templating over the whole file
//! (`{{ env "X" }}`, `{{ env "X" "default" }}`, `{{ must_env "X" }}`), and the `$0..$n`
//! placeholders of a target's schema and table, filled from the `key_regexp` captures (`$10`
//! is capture ten, never capture one followed by `0`).

use super::InvalidIdentifier;
use anyhow::{Context, Result, anyhow, bail};

/// Every `$n` in `s` as (start, end, n); digits are greedy, so `$10` is ten, never `$1` + `0`.
fn scan_placeholders(s: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if b[i] == b'$' {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > i + 1 {
                    let found = (i, j, s[i + 1..j].parse().unwrap_or(usize::MAX));
                    i = j;
                    return Some(found);
                }
            }
            i += 1;
        }
        None
    })
}

/// The `$n` placeholders in `s`.
pub fn placeholders(s: &str) -> Vec<usize> {
    scan_placeholders(s).map(|(_, _, n)| n).collect()
}

/// Replaces `$n` with capture n (one pass). Returns whether a capture was used.
pub fn expand_placeholders(s: &str, captures: &[String]) -> (String, bool) {
    let mut out = String::with_capacity(s.len());
    let mut used = false;
    let mut last = 0;
    for (start, end, n) in scan_placeholders(s) {
        out.push_str(&s[last..start]);
        if let Some(c) = captures.get(n) {
            out.push_str(c);
        }
        used = true;
        last = end;
    }
    out.push_str(&s[last..]);
    (out, used)
}

pub fn expand_ident(
    s: &str,
    captures: &[String],
    target: usize,
    what: &'static str,
    key: &str,
    plain: fn(&str) -> bool,
) -> Result<String, InvalidIdentifier> {
    let (v, used) = expand_placeholders(s, captures);
    if used && !plain(&v) {
        return Err(InvalidIdentifier {
            target,
            what,
            value: v,
            key: key.to_string(),
        });
    }
    Ok(v)
}

/// go-config's templating: `{{ env "X" }}`, `{{ env "X" "default" }}`, `{{ must_env "X" }}`.
/// Any other action is an error (rather than silently left in a password).
pub fn expand_template(src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow!("unclosed {{{{ in template"))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        out.push_str(&eval_action(action.trim(), env)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval_action(action: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let (func, args) = action
        .split_once(char::is_whitespace)
        .unwrap_or((action, ""));
    let args =
        parse_string_args(args).with_context(|| format!("template action {{{{ {action} }}}}"))?;
    match (func, args.as_slice()) {
        ("env", [name]) => Ok(env(name).unwrap_or_default()),
        ("env", [name, default]) => Ok(env(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.clone())),
        ("must_env", [name]) => {
            env(name).ok_or_else(|| anyhow!("environment variable {name} is not defined"))
        }
        _ => bail!("unsupported template action {{{{ {action} }}}} (env, must_env only)"),
    }
}

fn parse_string_args(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let q = chars.next().unwrap();
        if q != '"' && q != '`' {
            bail!("expected a quoted string");
        }
        let mut v = String::new();
        loop {
            match chars.next() {
                None => bail!("unterminated string"),
                Some(c) if c == q => break,
                Some('\\') if q == '"' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some('t') => v.push('\t'),
                    Some(c) => v.push(c),
                    None => bail!("unterminated string"),
                },
                Some(c) => v.push(c),
            }
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::rin::tests::env;

    #[test]
    fn template_actions() {
        let t = |s: &str| expand_template(s, &env);
        assert_eq!(
            t(r#"a: '{{ must_env "REDSHIFT_PASSWORD" }}'"#).unwrap(),
            "a: 'pw'"
        );
        assert_eq!(t(r#"{{env "NOPE"}}x"#).unwrap(), "x");
        assert_eq!(t(r#"{{ env "NOPE" "dflt" }}"#).unwrap(), "dflt");
        assert_eq!(t(r#"{{ env "EMPTY" "dflt" }}"#).unwrap(), "dflt");
        assert!(t(r#"{{ must_env "NOPE" }}"#).is_err());
        assert!(t(r#"{{ file "x" }}"#).is_err());
        assert!(t("{{ env \"X\"").is_err());
    }

    #[test]
    fn placeholders_do_not_corrupt_ten() {
        let caps: Vec<String> = (0..=10).map(|i| format!("c{i}")).collect();
        assert_eq!(expand_placeholders("t_$10_$1", &caps).0, "t_c10_c1");
        assert_eq!(expand_placeholders("$1$0", &caps).0, "c1c0");
        assert_eq!(
            expand_placeholders("plain$", &caps),
            ("plain$".to_string(), false)
        );
    }
}
