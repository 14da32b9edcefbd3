//! S3 event notifications, the messages every queue carries: the ones rin-ship sends itself
//! ([`object_created`], as S3 would put it on SQS) and every shape one can arrive in
//! ([`parse_body`]): plain S3 `Records` (every record), SNS-wrapped (`Message` holds the S3
//! event JSON), EventBridge "Object Created", and the `s3:TestEvent` S3 sends when a
//! notification is configured. Writing and reading live together so they cannot drift.
//!
//! Parsed by hand over `serde_json::Value` rather than with `aws_lambda_events::S3Event`: that
//! type requires fields (`eventTime`, `userIdentity`, `requestParameters`) that S3-compatible
//! servers and hand-written notifications (rin-ship's own) leave out, and one missing field
//! would make a whole message unloadable.

use crate::store::Stored;
use serde_json::{Value, json};

/// One object an event says was created (or removed: then it is never loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    pub bucket: String,
    /// Decoded key (form-URL-decoding applied for S3/SNS records).
    pub key: String,
    /// Without quotes; empty when the event has none.
    pub etag: String,
    pub version_id: String,
    pub size: u64,
    /// `ObjectCreated:Put`, `Object Created`, ...
    pub event_name: String,
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `s3:TestEvent`: nothing to load; delete the message.
    TestEvent,
    /// Every record of the message, in order.
    Objects(Vec<ObjectEvent>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("unknown event shape: {0}")]
    UnknownShape(String),
}

impl ParseError {
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotJson(_) => "malformed_json",
            ParseError::UnknownShape(_) => "unknown_shape",
        }
    }
}

pub fn parse_body(body: &str) -> Result<Parsed, ParseError> {
    let v: Value = serde_json::from_str(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    parse_value(&v, 0)
}

fn parse_value(v: &Value, depth: u8) -> Result<Parsed, ParseError> {
    let Some(obj) = v.as_object() else {
        return Err(ParseError::UnknownShape("not a JSON object".into()));
    };
    if obj.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Parsed::TestEvent);
    }
    if let Some(records) = obj.get("Records") {
        let arr = records
            .as_array()
            .ok_or_else(|| ParseError::UnknownShape("Records is not an array".into()))?;
        let mut out = Vec::with_capacity(arr.len());
        for (i, r) in arr.iter().enumerate() {
            // An SNS record inside a Lambda-style SNS event.
            if let Some(msg) = r.pointer("/Sns/Message").and_then(Value::as_str) {
                match parse_nested(msg, depth)? {
                    Parsed::TestEvent => {}
                    Parsed::Objects(o) => out.extend(o),
                }
                continue;
            }
            out.push(
                s3_record(r).map_err(|e| ParseError::UnknownShape(format!("record {i}: {e}")))?,
            );
        }
        return Ok(Parsed::Objects(out));
    }
    // SNS envelope (raw message delivery off): {"Type":"Notification","Message":"{...}"}
    if let Some(msg) = obj.get("Message").and_then(Value::as_str) {
        return parse_nested(msg, depth);
    }
    // EventBridge
    if obj.get("source").and_then(Value::as_str) == Some("aws.s3") {
        let dt = obj.get("detail-type").and_then(Value::as_str).unwrap_or("");
        let d = obj
            .get("detail")
            .ok_or_else(|| ParseError::UnknownShape("EventBridge event without detail".into()))?;
        let bucket = d.pointer("/bucket/name").and_then(Value::as_str);
        let key = d.pointer("/object/key").and_then(Value::as_str);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Err(ParseError::UnknownShape(
                "EventBridge detail without bucket.name / object.key".into(),
            ));
        };
        return Ok(Parsed::Objects(vec![ObjectEvent {
            bucket: bucket.to_string(),
            // EventBridge keys are not form-encoded.
            key: key.to_string(),
            etag: clean_etag(d.pointer("/object/etag").and_then(Value::as_str)),
            version_id: str_at(d, "/object/version-id"),
            size: d
                .pointer("/object/size")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            event_name: dt.to_string(),
            created: dt == "Object Created",
        }]));
    }
    let keys: Vec<&str> = obj.keys().map(String::as_str).take(5).collect();
    Err(ParseError::UnknownShape(format!(
        "no Records, Message or EventBridge source (keys: {keys:?})"
    )))
}

fn parse_nested(msg: &str, depth: u8) -> Result<Parsed, ParseError> {
    if depth > 2 {
        return Err(ParseError::UnknownShape("envelopes nested too deep".into()));
    }
    let inner: Value =
        serde_json::from_str(msg).map_err(|e| ParseError::NotJson(format!("SNS Message: {e}")))?;
    parse_value(&inner, depth + 1)
}

fn str_at(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn clean_etag(s: Option<&str>) -> String {
    s.unwrap_or("").trim_matches('"').to_string()
}

fn s3_record(r: &Value) -> Result<ObjectEvent, String> {
    let bucket = r
        .pointer("/s3/bucket/name")
        .and_then(Value::as_str)
        .ok_or("no s3.bucket.name")?;
    let raw_key = r
        .pointer("/s3/object/key")
        .and_then(Value::as_str)
        .ok_or("no s3.object.key")?;
    let event_name = str_at(r, "/eventName");
    let created = event_name.starts_with("ObjectCreated:");
    Ok(ObjectEvent {
        bucket: bucket.to_string(),
        key: decode_key(raw_key),
        etag: clean_etag(
            r.pointer("/s3/object/eTag")
                .or_else(|| r.pointer("/s3/object/etag"))
                .and_then(Value::as_str),
        ),
        version_id: str_at(r, "/s3/object/versionId"),
        size: r
            .pointer("/s3/object/size")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        event_name,
        created,
    })
}

/// S3 event keys are form-URL-encoded: `+` is a space, `%2B` a plus, `%2F` a slash.
pub fn decode_key(raw: &str) -> String {
    form_urlencoded::parse(format!("k={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// S3 event keys are form-URL-encoded (space `+`, `+` `%2B`, `=` `%3D`); `/` stays as is.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}

/// The S3 `ObjectCreated` event for one object, as S3 would put it on SQS.
pub fn object_created(obj: &Stored, size: u64, region: &str) -> String {
    let now = chrono::Utc::now();
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "eventName": obj.event_name,
        "userIdentity": {"principalId": "rin-ship"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "rin-ship",
            "bucket": {
                "name": obj.bucket,
                "ownerIdentity": {"principalId": "rin-ship"},
                "arn": format!("arn:aws:s3:::{}", obj.bucket),
            },
            "object": {
                "key": encode_key(&obj.key),
                "size": size,
                "eTag": obj.etag,
                "sequencer": format!("{:016X}", now.timestamp_nanos_opt().unwrap_or(0)),
            },
        },
    }]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, key: &str) -> String {
        format!(
            r#"{{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1","eventName":"{name}",
            "s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}","size":7,"eTag":"abc"}}}}}}"#
        )
    }

    #[test]
    fn all_records_and_key_decoding() {
        let body = format!(
            r#"{{"Records":[{},{},{}]}}"#,
            rec("ObjectCreated:Put", "incoming%2F2024%2Fa+b%2Bc.json.gz"),
            rec("ObjectCreated:CompleteMultipartUpload", "x/y"),
            rec("ObjectRemoved:Delete", "x/z")
        );
        let Parsed::Objects(o) = parse_body(&body).unwrap() else {
            panic!()
        };
        assert_eq!(o.len(), 3);
        assert_eq!(o[0].key, "incoming/2024/a b+c.json.gz");
        assert_eq!(o[0].etag, "abc");
        assert!(o[0].created && o[1].created && !o[2].created);
    }

    #[test]
    fn test_event_plain_and_sns() {
        let t = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"x","Bucket":"b"}"#;
        assert_eq!(parse_body(t).unwrap(), Parsed::TestEvent);
        let sns = serde_json::json!({"Type":"Notification","Message": t}).to_string();
        assert_eq!(parse_body(&sns).unwrap(), Parsed::TestEvent);
    }

    #[test]
    fn sns_wrapped_records() {
        let inner = format!(r#"{{"Records":[{}]}}"#, rec("ObjectCreated:Put", "a%2Fb"));
        let sns =
            serde_json::json!({"Type":"Notification","MessageId":"m","Message": inner}).to_string();
        let Parsed::Objects(o) = parse_body(&sns).unwrap() else {
            panic!()
        };
        assert_eq!(o[0].key, "a/b");
    }

    #[test]
    fn eventbridge() {
        let body = r#"{"version":"0","detail-type":"Object Created","source":"aws.s3",
          "detail":{"bucket":{"name":"b"},"object":{"key":"a b+c","size":3,"etag":"e1"}}}"#;
        let Parsed::Objects(o) = parse_body(body).unwrap() else {
            panic!()
        };
        assert_eq!(o[0].key, "a b+c");
        assert!(o[0].created);
        let del = body.replace("Object Created", "Object Deleted");
        let Parsed::Objects(o) = parse_body(&del).unwrap() else {
            panic!()
        };
        assert!(!o[0].created);
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(
            parse_body("{not json").unwrap_err().reason(),
            "malformed_json"
        );
        assert_eq!(
            parse_body(r#"{"hello":1}"#).unwrap_err().reason(),
            "unknown_shape"
        );
        assert_eq!(parse_body("[1]").unwrap_err().reason(), "unknown_shape");
        assert_eq!(
            parse_body(r#"{"Records":[{"s3":{}}]}"#)
                .unwrap_err()
                .reason(),
            "unknown_shape"
        );
    }
    #[test]
    fn the_importer_parses_our_events() {
        let obj = Stored {
            bucket: "my-logs".into(),
            key: "rin/logs/app.web/dt=2024-05-01/a b+c%/n-0000000001.json.gz".into(),
            etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
            event_name: "ObjectCreated:Put",
        };
        let body = object_created(&obj, 1234, "us-east-1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v.pointer("/Records/0/s3/object/key").unwrap(),
            "rin/logs/app.web/dt%3D2024-05-01/a+b%2Bc%25/n-0000000001.json.gz"
        );
        let Parsed::Objects(o) = parse_body(&body).unwrap() else {
            panic!("not objects")
        };
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].bucket, "my-logs");
        assert_eq!(o[0].key, obj.key);
        assert_eq!(o[0].etag, obj.etag);
        assert_eq!(o[0].size, 1234);
        assert_eq!(o[0].event_name, "ObjectCreated:Put");
        assert!(o[0].created);
        // The shape aws_lambda_events (and so Lambda-style consumers) expects.
        let ev: aws_lambda_events::s3::S3Event = serde_json::from_str(&body).unwrap();
        assert_eq!(ev.records[0].s3.object.size, Some(1234));
    }
}
