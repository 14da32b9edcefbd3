//! Routing: fluentd-style tag patterns decide which target receives an event. Owns pattern
//! parsing and matching; it must never drop an event: a tag that matches nothing goes to the
//! fallback target or is reported as refused to the intake, which refuses it visibly.
//!
//! Semantics follow fluentd's `<match>`: `*` matches exactly one dot-separated part (any
//! characters but `.`), `**` matches zero or more parts (`a.**` matches `a`, `a.b`, `a.b.c`),
//! `{x,y}` matches either alternative (which may contain dots and wildcards).

#[derive(Debug, Clone)]
pub struct TagPattern {
    /// Brace alternatives expanded; each is a list of dot-separated segments.
    alternatives: Vec<Vec<Segment>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `**`: zero or more whole parts.
    AnyParts,
    /// One part, matched as a glob where `*` spans any characters within the part.
    Glob(String),
}

impl TagPattern {
    pub fn parse(pattern: &str) -> Result<TagPattern, String> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err("a tag pattern cannot be empty".into());
        }
        let mut alternatives = Vec::new();
        for expanded in expand_braces(pattern)? {
            let mut segments = Vec::new();
            for part in expanded.split('.') {
                if part.is_empty() {
                    return Err(format!(
                        "`{pattern}` has an empty part (two dots in a row?)"
                    ));
                }
                if part == "**" {
                    segments.push(Segment::AnyParts);
                } else if part.contains("**") {
                    return Err(format!(
                        "`{pattern}`: `**` must be a whole part, as in `a.**`"
                    ));
                } else {
                    segments.push(Segment::Glob(part.to_string()));
                }
            }
            alternatives.push(segments);
        }
        Ok(TagPattern { alternatives })
    }

    pub fn matches(&self, tag: &str) -> bool {
        let parts: Vec<&str> = tag.split('.').collect();
        self.alternatives
            .iter()
            .any(|segments| match_parts(segments, &parts))
    }
}

fn match_parts(segments: &[Segment], parts: &[&str]) -> bool {
    match segments.split_first() {
        None => parts.is_empty(),
        Some((Segment::AnyParts, rest)) => {
            (0..=parts.len()).any(|skip| match_parts(rest, &parts[skip..]))
        }
        Some((Segment::Glob(glob), rest)) => match parts.split_first() {
            Some((part, tail)) => {
                glob_match(glob.as_bytes(), part.as_bytes()) && match_parts(rest, tail)
            }
            None => false,
        },
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

/// Expands `{a,b}` alternatives (nested allowed) into every combination.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') || pattern.contains(',') {
            return Err(format!("`{pattern}`: `}}` or `,` outside braces"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let mut depth = 0usize;
    let mut close = None;
    let mut splits = Vec::new();
    for (i, c) in pattern[open..].char_indices() {
        let i = i + open;
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            ',' if depth == 1 => splits.push(i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("`{pattern}`: unclosed `{{`"))?;
    let mut bounds = vec![open];
    bounds.extend(splits);
    bounds.push(close);
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    for pair in bounds.windows(2) {
        let alternative = &pattern[pair[0] + 1..pair[1]];
        for expanded in expand_braces(&format!("{head}{alternative}{tail}"))? {
            out.push(expanded);
        }
    }
    Ok(out)
}

/// The routing table: targets in config order, first match wins.
pub struct Router {
    routes: Vec<(Vec<TagPattern>, usize)>,
    fallback: Option<usize>,
}

impl Router {
    /// `targets` holds each target's patterns, in config order; `fallback` its index.
    pub fn new(targets: &[Vec<String>], fallback: Option<usize>) -> Result<Router, String> {
        let mut routes = Vec::new();
        for (index, patterns) in targets.iter().enumerate() {
            let parsed = patterns
                .iter()
                .map(|p| TagPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()?;
            routes.push((parsed, index));
        }
        Ok(Router { routes, fallback })
    }

    /// The target index for a tag, or `None` when it must be refused.
    pub fn route(&self, tag: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(tag)))
            .map(|(_, index)| *index)
            .or(self.fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, tag: &str) -> bool {
        TagPattern::parse(pattern).unwrap().matches(tag)
    }

    #[test]
    fn single_star_is_one_part() {
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("*.access", "web.access"));
        assert!(!m("*.access", "a.web.access"));
        assert!(m("a.b*", "a.bcd"));
    }

    #[test]
    fn double_star_is_zero_or_more_parts() {
        assert!(m("a.**", "a"));
        assert!(m("a.**", "a.b"));
        assert!(m("a.**", "a.b.c"));
        assert!(!m("a.**", "ab"));
        assert!(m("**", "anything.at.all"));
        assert!(m("**.log", "x.y.log"));
        assert!(m("a.**.z", "a.z"));
        assert!(m("a.**.z", "a.b.c.z"));
    }

    #[test]
    fn braces_are_alternatives() {
        assert!(m("{a,b}.log", "a.log"));
        assert!(m("{a,b}.log", "b.log"));
        assert!(!m("{a,b}.log", "c.log"));
        assert!(m("{app.**,sys.*}", "app.x.y"));
        assert!(m("x.{a,{b,c}}", "x.c"));
        assert!(TagPattern::parse("{a,b").is_err());
        assert!(TagPattern::parse("a..b").is_err());
        assert!(TagPattern::parse("a.**b").is_err());
    }

    #[test]
    fn first_match_wins_then_fallback() {
        let r = Router::new(&[vec!["app.**".into()], vec!["*.access".into()]], None).unwrap();
        assert_eq!(r.route("app.web.access"), Some(0));
        assert_eq!(r.route("web.access"), Some(1));
        assert_eq!(r.route("other"), None);
        let r = Router::new(&[vec!["app.**".into()]], Some(0)).unwrap();
        assert_eq!(r.route("other"), Some(0));
    }
}
