use shopflow_runtime::HandlerError;

/// Errors of the event-sourcing machinery (a command's own rejection is the aggregate's error,
/// returned beside these: see [`Repository::execute`](crate::Repository::execute)).
///
/// As handler errors: a concurrent append (`Store(Conflict)`) is transient (the command is
/// retried on the new state); an unreadable event or snapshot is permanent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] shopflow_store::Error),
    #[error(transparent)]
    Envelope(#[from] shopflow_envelope::Error),
    /// A stored snapshot or view row that does not deserialize into the state it holds.
    #[error("corrupt {what} of `{stream}`: {reason}")]
    Corrupt {
        what: &'static str,
        stream: String,
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e @ shopflow_store::Error::Conflict { .. }) => {
                HandlerError::Transient(e.to_string())
            }
            Error::Store(e) => HandlerError::from(e),
            Error::Envelope(e) => HandlerError::from(e),
            e @ Error::Corrupt { .. } => HandlerError::Permanent(e.to_string()),
        }
    }
}
