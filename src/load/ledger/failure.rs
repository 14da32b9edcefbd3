//! Why a load failed, and what that calls for: one set of rules for every driver.
//!
//! - **Data**: the object or its rows are bad (bad gzip or zstd, a line that is not JSON, a
//!   value a column cannot take: SQLSTATE classes 22 and 23, SQLite's constraint and type
//!   errors, Redshift's "Load into table ... failed"). Retrying cannot help: the object goes
//!   to quarantine and its message is deleted.
//! - **Transient**: the connection, a restart, resources, serialization, a lock timeout, an
//!   object read, a busy database: retried with backoff, then left for redelivery.
//! - **Other**: anything else (a missing table or column, permissions, a bad manifest): the
//!   message stays on the queue for its redrive policy.
//!
//! A driver turns what its warehouse says into a SQLSTATE where it has one (PostgreSQL and
//! Redshift over the wire send it; SQLite's result codes map onto the same classes) and into
//! [`classify_server`]; the Data API, which sends only text, goes through the same function.
//!
//! Must never: call a failure of the ledger's own statements a data error (no row of the
//! object is at fault then); lose which objects a data error belongs to.

use serde::Serialize;

/// What a failed load calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Data,
    Transient,
    Other,
}

impl ErrorKind {
    /// The `kind` label of `rin_import_load_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Data => "data",
            ErrorKind::Transient => "transient",
            ErrorKind::Other => "other",
        }
    }
}

/// The kind of an error a warehouse server sent: by SQLSTATE when there is one, else (and for
/// Redshift's catch-all `XX000`) by its message.
pub fn classify_server(sqlstate: Option<&str>, message: &str) -> ErrorKind {
    match sqlstate.unwrap_or("") {
        // connection_exception; admin_shutdown, crash_shutdown, cannot_connect_now,
        // query_canceled (statement_timeout); insufficient_resources; serialization_failure,
        // deadlock_detected; lock_not_available (lock_timeout).
        c if c.starts_with("08") => ErrorKind::Transient,
        "57P01" | "57P02" | "57P03" | "57014" => ErrorKind::Transient,
        c if c.starts_with("53") => ErrorKind::Transient,
        "40001" | "40P01" | "55P03" => ErrorKind::Transient,
        // data_exception, integrity_constraint_violation.
        c if c.starts_with("22") || c.starts_with("23") => ErrorKind::Data,
        _ if is_load_error_message(message) => ErrorKind::Data,
        // Redshift's error 1023.
        _ if message.contains("Serializable isolation violation") => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// Whether an error message is Redshift's "the COPY rejected rows" (a data error), as
/// opposed to a failure to read S3, a bad manifest or a missing table.
pub fn is_load_error_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("stl_load_errors") || m.contains("sys_load_error_detail")
}

/// The kind of a client-side error (no answer from the server): a lost or broken connection is
/// transient; a bug in what was sent or read is not. `text` is the client's message.
pub fn classify_client(text: &str) -> ErrorKind {
    let client_side = [
        "error serializing",
        "error deserializing",
        "invalid column",
        "query returned an unexpected number of rows",
        "invalid configuration",
        "authentication error",
    ];
    if client_side.iter().any(|p| text.starts_with(p)) {
        ErrorKind::Other
    } else {
        ErrorKind::Transient
    }
}

/// Where in an object a data error is, as precisely as the warehouse tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// The object's `s3://` URL (from Redshift: as its load-error view keeps it).
    pub url: String,
    pub line: Option<u64>,
    pub column: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)?;
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(c) = &self.column {
            write!(f, " column {c}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A five-character SQLSTATE (`22P02`), without an allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `None` unless `code` is five ASCII characters.
    pub fn new(code: &str) -> Option<SqlState> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes.is_ascii().then_some(SqlState(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl std::fmt::Debug for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SqlState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A failed load, classified. Kept small: it is the error of every load call.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub kind: ErrorKind,
    /// The server's SQLSTATE, when the server refused.
    pub sqlstate: Option<SqlState>,
    /// What failed (the statement or step) and why: `<what>: <reason>`.
    pub message: String,
    /// Where the reason starts in `message`.
    pub(super) reason_at: usize,
    /// The objects (indexes into the group's items) the failure is theirs.
    pub items: Vec<usize>,
    pub details: Vec<ErrorDetail>,
    /// PostgreSQL: the objects to stage again, in this order, to find the bad row.
    pub restage: Vec<usize>,
    /// The object's bytes could not be read (the store, not the warehouse): the object alone
    /// is retried. A warehouse error while its rows streamed (a lock timeout in the COPY) is
    /// attributed to the object too, but is not this.
    pub unreadable: bool,
    /// PostgreSQL, `schema: evolve`: the columns (name, type) the records need and the table
    /// lacks; the driver adds them and loads again.
    pub new_columns: Option<Box<NewColumns>>,
}

/// Columns (name, type) `schema: evolve` adds.
pub type NewColumns = Vec<(String, &'static str)>;

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(s) = &self.sqlstate {
            write!(f, " (SQLSTATE {})", s.as_str())?;
        }
        for d in self.details.iter().take(3) {
            write!(f, "; {d}")?;
        }
        if self.details.len() > 3 {
            write!(f, "; and {} more", self.details.len() - 3)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadFailure {}

impl LoadFailure {
    pub fn new(kind: ErrorKind, message: String) -> LoadFailure {
        LoadFailure {
            kind,
            sqlstate: None,
            message,
            reason_at: 0,
            items: Vec::new(),
            details: Vec::new(),
            restage: Vec::new(),
            unreadable: false,
            new_columns: None,
        }
    }

    /// A failure whose message is `<what>: <reason>` (just `reason` when `what` is empty).
    fn described(kind: ErrorKind, what: &str, reason: &str) -> LoadFailure {
        let message = if what.is_empty() {
            reason.to_string()
        } else {
            format!("{what}: {reason}")
        };
        LoadFailure {
            reason_at: message.len() - reason.len(),
            ..LoadFailure::new(kind, message)
        }
    }

    /// The reason alone (the server's message and detail), without what failed.
    pub fn reason(&self) -> &str {
        &self.message[self.reason_at..]
    }

    /// The same failure told as `<what>: <reason>`.
    #[cfg_attr(not(feature = "redshift"), allow(dead_code))]
    pub fn retold(mut self, what: &str) -> LoadFailure {
        let reason = self.reason().to_string();
        let told = LoadFailure::described(self.kind, what, &reason);
        self.message = told.message;
        self.reason_at = told.reason_at;
        self
    }

    /// The server refused `what` (a step, or a statement as shown) with `reason`: classified by
    /// [`classify_server`]; with `data_possible` false (the ledger's own statements, reading the
    /// catalog), a data-class answer is not a data error.
    pub fn server(
        sqlstate: Option<&str>,
        reason: String,
        data_possible: bool,
        what: &str,
    ) -> LoadFailure {
        let mut kind = classify_server(sqlstate, &reason);
        if kind == ErrorKind::Data && !data_possible {
            kind = ErrorKind::Other;
        }
        LoadFailure {
            sqlstate: sqlstate.and_then(SqlState::new),
            ..LoadFailure::described(kind, what, &reason)
        }
    }

    /// Object `url` is not what it claims (bad or truncated compression, a line that is not
    /// JSON, at `line` when known): a data error of that object alone.
    pub fn corrupt(url: &str, line: Option<u64>, reason: String) -> LoadFailure {
        LoadFailure {
            details: vec![ErrorDetail {
                url: url.to_string(),
                line,
                column: None,
                reason: reason.clone(),
            }],
            ..LoadFailure::described(ErrorKind::Data, &format!("loading {url}"), &reason)
        }
    }

    /// Reading object `url` failed (S3, the disk): transient.
    pub fn read(url: &str, e: impl std::fmt::Display) -> LoadFailure {
        LoadFailure::new(ErrorKind::Transient, format!("reading {url}: {e}")).unreadable()
    }

    /// The failure, as the store's: the object's bytes could not be read.
    pub fn unreadable(mut self) -> LoadFailure {
        self.unreadable = true;
        self
    }

    /// The failure, as object `i`'s.
    pub fn of_item(mut self, i: usize) -> LoadFailure {
        self.items = vec![i];
        self
    }

    /// A data error of a load with one new object is that object's.
    pub fn attribute_single(mut self, new: &[usize]) -> LoadFailure {
        if self.kind == ErrorKind::Data && self.items.is_empty() && new.len() == 1 {
            self.items = new.to_vec();
        }
        self
    }

    /// The details of item `url` (all of them when none names it).
    pub fn details_of(&self, url: &str) -> Vec<ErrorDetail> {
        let mine: Vec<ErrorDetail> = self
            .details
            .iter()
            .filter(|d| match_file(&d.url, &[url.to_string()]).is_some())
            .cloned()
            .collect();
        if mine.is_empty() {
            self.details.clone()
        } else {
            mine
        }
    }
}

/// A failure of a step that is no statement (a local file, a setting): an I/O error is
/// transient, anything else other; a [`LoadFailure`] inside keeps its own kind.
impl From<anyhow::Error> for LoadFailure {
    fn from(e: anyhow::Error) -> LoadFailure {
        if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<LoadFailure>()) {
            return f.clone();
        }
        let kind = if e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some())
        {
            ErrorKind::Transient
        } else {
            ErrorKind::Other
        };
        LoadFailure::new(kind, format!("{e:#}"))
    }
}

/// The index of the URL a load-error row's `file` names: the equal one, else (Redshift keeps
/// 256 bytes of it) the only one a long `file` is the start of.
pub fn match_file(file: &str, urls: &[String]) -> Option<usize> {
    if file.is_empty() {
        return None;
    }
    if let Some(i) = urls.iter().position(|u| u == file) {
        return Some(i);
    }
    if file.len() < 250 {
        return None;
    }
    let mut hits = urls.iter().enumerate().filter(|(_, u)| u.starts_with(file));
    match (hits.next(), hits.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        use ErrorKind::*;
        for (code, msg, want) in [
            ("08006", "connection failure", Transient),
            (
                "57P01",
                "terminating connection due to administrator command",
                Transient,
            ),
            ("57P03", "the database system is starting up", Transient),
            ("53300", "too many connections", Transient),
            ("40001", "could not serialize access", Transient),
            ("40P01", "deadlock detected", Transient),
            (
                "55P03",
                "canceling statement due to lock timeout",
                Transient,
            ),
            ("22P02", "invalid input syntax for type bigint: \"x\"", Data),
            ("22003", "value out of range", Data),
            ("23502", "null value in column \"id\"", Data),
            ("42P01", "relation \"t\" does not exist", Other),
            ("42501", "permission denied", Other),
            (
                "XX000",
                "Load into table 'rin_ship_stage' failed. Check 'sys_load_error_detail' system table for details.",
                Data,
            ),
            ("XX000", "S3ServiceException:Access Denied", Other),
            (
                "XX000",
                "1023 Serializable isolation violation on table",
                Transient,
            ),
        ] {
            assert_eq!(classify_server(Some(code), msg), want, "{code} {msg}");
        }
        let io = anyhow::Error::new(std::io::Error::other("reset")).context("loading");
        assert_eq!(LoadFailure::from(io).kind, Transient);
        assert_eq!(
            LoadFailure::from(anyhow::anyhow!("something else")).kind,
            Other
        );
        let f = LoadFailure {
            items: vec![1],
            ..LoadFailure::new(Data, "bad".into())
        };
        let e = anyhow::Error::new(f).context("outer");
        let back = LoadFailure::from(e);
        assert_eq!((back.kind, back.items), (Data, vec![1]));
        // Data-class answers to the ledger's own statements are not the object's fault.
        assert_eq!(
            LoadFailure::server(
                Some("23505"),
                "duplicate key".into(),
                false,
                "ledger insert"
            )
            .kind,
            Other
        );
    }
}
