//! Deterministic object keys: a key is a pure function of the target, the node id, the chunk's
//! persisted sequence number, its partition tag and its first event time, so a retried upload
//! rewrites the same object instead of adding one.

use crate::intake::msgpack::EventTime;
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
}
