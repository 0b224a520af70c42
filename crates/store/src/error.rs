use crate::expected::ExpectedVersion;

/// Errors of the stores.
///
/// How they map to HTTP, for services that surface them: `Conflict` → 409; `Invalid` → 422;
/// `Unavailable`, `Pool` and transient database errors → 503 with Retry-After; the rest → 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: the stream is not at the expected version.
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event with this id is already stored.
    #[error("event {event_id} is already stored")]
    DuplicateEvent { event_id: String },
    /// The caller passed something the store cannot accept.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// Data read back is not what the store writes (a hand-edited row, a bug).
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    /// A column was read as the wrong type.
    #[error("column {index} is {found}, not {expected}")]
    Column {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("migration {component} v{version} failed: {source}")]
    Migration {
        component: String,
        version: u32,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// tokio-postgres prints only "db error" for a server error; this says what the server said.
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection pool: {reason}")]
    Pool { reason: String },
    #[error(transparent)]
    Bus(#[from] shopflow_bus::Error),
    #[error(transparent)]
    Envelope(#[from] shopflow_envelope::Error),
    #[error("database unavailable: {reason}")]
    Unavailable { reason: String },
    /// The simulator killed the process at this crash point (`shopflow_envelope::sim`): what
    /// follows it never ran. Never raised outside a simulation.
    #[error("simulated crash at {0}")]
    Crashed(&'static str),
}

impl Error {
    /// True when trying again later may succeed (busy database, lost connection, serialization
    /// failure, bus outage); false for errors of the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            Error::Postgres(e) => match e.code() {
                Some(code) => {
                    let c = code.code();
                    // 40xxx: serialization failure / deadlock; 08xxx: connection; 57P0x: shutdown.
                    c.starts_with("40") || c.starts_with("08") || c.starts_with("57P0")
                }
                None => e.is_closed() || e.as_db_error().is_none(),
            },
            Error::Pool { .. } | Error::Unavailable { .. } => true,
            Error::Bus(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Whether this is a unique violation whose constraint or message names `column`.
    pub(crate) fn unique_violation_on(&self, column: &str) -> bool {
        if !self.is_unique_violation() {
            return false;
        }
        match self {
            Error::Postgres(e) => e.as_db_error().is_some_and(|d| {
                d.constraint().is_some_and(|c| c.contains(column)) || d.message().contains(column)
            }),
            other => other.to_string().contains(column),
        }
    }

    /// Whether this is a unique (or primary-key) violation, on either backend.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            Error::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A PostgreSQL error as the server reported it (`ERROR 40P01: deadlock detected (detail)`), or
/// the client's own message with its cause for errors that never reached the server.
fn postgres_message(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut m = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
        if let Some(detail) = d.detail() {
            m.push_str(&format!(" ({detail})"));
        }
        return m;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
