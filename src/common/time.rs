//! The time of an event, as every stage carries it: the intakes read it (Fluent's EventTime,
//! an integer, a float, an HTTP field), the buffer keeps a chunk's first one, and object keys
//! render their strftime fields from it.

/// An event time, as nanoseconds-resolution seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventTime {
    pub secs: i64,
    pub nanos: u32,
}
