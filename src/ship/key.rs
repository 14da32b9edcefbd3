//! Deterministic object keys: a key is a pure function of the target, the node id, the chunk's
//! persisted sequence number, its partition tag and its first event time, so a retried upload
//! rewrites the same object instead of adding one.

use crate::common::time::EventTime;
use chrono::format::{Item, StrftimeItems};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// Literal text, possibly with strftime fields.
    Text(String),
    Tag,
    TagField(usize),
    Target,
    Node,
    Seq,
}

#[derive(Debug, Clone)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

/// What a key is made from.
pub struct KeyInputs<'a> {
    pub target: &'a str,
    pub node: &'a str,
    pub seq: u64,
    pub tag: &'a str,
    pub first_time: EventTime,
}

impl KeyTemplate {
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{template}`: unclosed `{{`"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "tag" => Part::Tag,
                "target" => Part::Target,
                "node" => Part::Node,
                "seq" => Part::Seq,
                _ => match name.strip_prefix("tag[").and_then(|n| n.strip_suffix(']')) {
                    Some(n) => Part::TagField(
                        n.parse()
                            .map_err(|_| format!("`{{{name}}}`: the index must be a number"))?,
                    ),
                    None => {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}` (known: {{tag}}, {{tag[N]}}, {{target}}, {{node}}, {{seq}})"
                        ));
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        for part in &parts {
            if let Part::Text(text) = part {
                if text.contains('}') {
                    return Err(format!("`{template}`: `}}` without `{{`"));
                }
                if StrftimeItems::new(text).any(|item| matches!(item, Item::Error)) {
                    return Err(format!("`{text}` has an invalid strftime field"));
                }
            }
        }
        if !parts.contains(&Part::Seq) {
            return Err(format!(
                "`{template}` must contain {{seq}}, or two chunks could get the same key"
            ));
        }
        if template.starts_with('/') || template.split('/').any(|s| s == ".." || s == ".") {
            return Err(format!(
                "`{template}` must be relative, without `.` or `..` segments"
            ));
        }
        Ok(KeyTemplate { parts })
    }

    /// Whether keys depend on the tag: then each tag gets chunks of its own.
    pub fn uses_tag(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Tag | Part::TagField(_)))
    }

    pub fn render(&self, input: &KeyInputs) -> String {
        let time = chrono::DateTime::from_timestamp(input.first_time.secs, input.first_time.nanos)
            .unwrap_or_default();
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(&time.format(text).to_string()),
                Part::Tag => key.push_str(&safe_segment(input.tag)),
                Part::TagField(n) => {
                    key.push_str(&safe_segment(input.tag.split('.').nth(*n).unwrap_or("")))
                }
                Part::Target => key.push_str(input.target),
                Part::Node => key.push_str(&safe_segment(input.node)),
                Part::Seq => key.push_str(&format!("{:010}", input.seq)),
            }
        }
        key
    }
}

/// What a `{tag}`, `{tag[N]}` or `{node}` renders to (see [`safe_segment`]), as a regex.
const SEGMENT: &str = "[A-Za-z0-9._-]+";

impl KeyTemplate {
    /// The keys this template renders, as an anchored regular expression for `target`;
    /// `true` when the first `{tag}` is captured as `$1` (the embedded loader maps it to a
    /// table). Strftime fields match anything (non-greedy): the expression is anchored at both
    /// ends, and the placeholders around them are precise.
    pub fn regex(&self, target: &str) -> (String, bool) {
        let mut re = String::from("^");
        let mut by_tag = false;
        for part in &self.parts {
            match part {
                Part::Tag if !by_tag => {
                    by_tag = true;
                    re.push_str(&format!("({SEGMENT})"));
                }
                Part::Tag | Part::TagField(_) | Part::Node => re.push_str(SEGMENT),
                Part::Target => re.push_str(&regex::escape(target)),
                Part::Seq => re.push_str("[0-9]+"),
                Part::Text(text) => push_strftime_regex(&mut re, text),
            }
        }
        re.push('$');
        (re, by_tag)
    }
}

/// Literal text with strftime fields as a regex: `%%` is `%`, any other field matches
/// anything (non-greedy), the rest is escaped.
fn push_strftime_regex(re: &mut String, mut text: &str) {
    while !text.is_empty() {
        match text.strip_prefix('%') {
            Some(after) => {
                if let Some(a) = after.strip_prefix('%') {
                    re.push('%');
                    text = a;
                } else {
                    // A field ends at its letter (`%Y`, `%-d`, `%3f`).
                    let end = after
                        .find(|c: char| c.is_ascii_alphabetic())
                        .map_or(after.len(), |i| i + 1);
                    re.push_str(".*?");
                    text = &after[end..];
                }
            }
            None => {
                let end = text.find('%').unwrap_or(text.len());
                re.push_str(&regex::escape(&text[..end]));
                text = &text[end..];
            }
        }
    }
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest with `_`, and never yields an empty, `.` or `..`
/// segment, so a tag can neither escape a folder nor make an awkward S3 key.
fn safe_segment(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(tag: &str) -> KeyInputs<'_> {
        KeyInputs {
            target: "web",
            node: "n1",
            seq: 42,
            tag,
            first_time: EventTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = KeyTemplate::parse(
            "logs/{tag}/{tag[1]}/{target}/dt=%Y-%m-%d/hour=%H/{node}-{seq}.json.gz",
        )
        .unwrap();
        assert_eq!(
            t.render(&inputs("app.api.access")),
            "logs/app.api.access/api/web/dt=2023-11-14/hour=22/n1-0000000042.json.gz"
        );
        assert!(t.uses_tag());
        assert!(!KeyTemplate::parse("{target}/{seq}").unwrap().uses_tag());
    }

    #[test]
    fn hostile_tags_stay_inside() {
        let t = KeyTemplate::parse("{tag}/{tag[5]}/{seq}").unwrap();
        assert_eq!(t.render(&inputs("..")), "_/_/0000000042");
        assert_eq!(t.render(&inputs("a/../b c")), "a_.._b_c/_/0000000042");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(
            KeyTemplate::parse("logs/{tag}.gz")
                .unwrap_err()
                .contains("{seq}")
        );
        assert!(
            KeyTemplate::parse("{seq}/{colour}")
                .unwrap_err()
                .contains("colour")
        );
        assert!(KeyTemplate::parse("/abs/{seq}").is_err());
        assert!(KeyTemplate::parse("a/../{seq}").is_err());
        assert!(KeyTemplate::parse("{seq}/%Q").is_err());
    }

    #[test]
    fn keys_match_their_template() {
        let t = KeyTemplate::parse("logs/{tag}/dt=%Y-%m-%d/hour=%H/{node}-{seq}.json.gz").unwrap();
        let (re, by_tag) = t.regex("default");
        assert!(by_tag);
        let r = regex::Regex::new(&re).unwrap();
        let key = t.render(&inputs("app.web"));
        assert_eq!(&r.captures(&key).unwrap()[1], "app.web");
        assert!(!r.is_match("logs/app.web/x/../y.json.gz"));
        let (re, by_tag) = KeyTemplate::parse("{target}/%Y/%%/{tag[1]}-{seq}.gz")
            .unwrap()
            .regex("t-1");
        assert!(!by_tag);
        assert_eq!(re, "^t\\-1/.*?/%/[A-Za-z0-9._-]+\\-[0-9]+\\.gz$");
    }
}
