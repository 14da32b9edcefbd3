//! A secret (a password, a shared key, an access key's secret half): usable by the code, shown
//! as `***` by `Debug` and without any `Display`, so it cannot reach a log line or an error
//! message by accident. Config files deserialize it from a plain string.

use serde::Deserialize;

#[derive(Deserialize, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    // Config files make secrets by deserializing; code makes them for the AWS SDKs.
    #[cfg_attr(not(any(feature = "s3", feature = "sqs")), allow(dead_code))]
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret's text, for the one place that sends it (a login, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_text() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }
}
