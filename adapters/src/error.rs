//! Why a source gave no usable answer.

use std::time::Duration;

use tonic::{Code, Status};

/// Why a source gave no usable answer. The broker turns each variant into a
/// source status of the report (`TIMEOUT`, `UNAVAILABLE`, `ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The source did not answer before the deadline.
    #[error("no answer before the deadline")]
    Timeout,
    /// The source could not be reached or said it is unavailable; worth
    /// retrying later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The source is over its limits (its own, or the broker's for it).
    #[error("rate limited")]
    RateLimited {
        /// When the source says it can be asked again.
        retry_after: Option<Duration>,
    },
    /// The source refused the request as invalid.
    #[error("request refused by the source: {0}")]
    Rejected(String),
    /// The source answered with something that cannot be used (a person
    /// missing or asked about twice, a fact without a value, a kind it does
    /// not serve, a message that does not decode).
    #[error("unusable answer: {0}")]
    Malformed(String),
    /// Any other failure at the source.
    #[error("source error: {0}")]
    Internal(String),
}

impl AdapterError {
    /// Whether asking again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdapterError::Unavailable(_) | AdapterError::RateLimited { .. } => true,
            AdapterError::Timeout
            | AdapterError::Rejected(_)
            | AdapterError::Malformed(_)
            | AdapterError::Internal(_) => false,
        }
    }

    /// Reads the status a remote source (or a transport) returned.
    pub fn from_status(status: &Status) -> Self {
        let msg = status.message().to_owned();
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => AdapterError::Timeout,
            Code::Unavailable => AdapterError::Unavailable(msg),
            Code::ResourceExhausted => AdapterError::RateLimited { retry_after: None },
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                AdapterError::Rejected(msg)
            }
            Code::Unimplemented => AdapterError::Internal(format!("not implemented: {msg}")),
            Code::PermissionDenied | Code::Unauthenticated => {
                AdapterError::Rejected(format!("{}: {msg}", status.code().description()))
            }
            Code::Ok
            | Code::Unknown
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted
            | Code::Internal
            | Code::DataLoss => AdapterError::Internal(msg),
        }
    }

    /// The status a source serving `AdapterService` returns for this error.
    pub fn to_status(&self) -> Status {
        match self {
            AdapterError::Timeout => Status::deadline_exceeded(self.to_string()),
            AdapterError::Unavailable(_) => Status::unavailable(self.to_string()),
            AdapterError::RateLimited { .. } => Status::resource_exhausted(self.to_string()),
            AdapterError::Rejected(_) => Status::invalid_argument(self.to_string()),
            AdapterError::Malformed(_) | AdapterError::Internal(_) => {
                Status::internal(self.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_the_kind() {
        for e in [
            AdapterError::Timeout,
            AdapterError::Unavailable("down".into()),
            AdapterError::RateLimited { retry_after: None },
        ] {
            let back = AdapterError::from_status(&e.to_status());
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&e));
        }
        assert!(matches!(
            AdapterError::from_status(&Status::invalid_argument("bad id")),
            AdapterError::Rejected(m) if m == "bad id"
        ));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(AdapterError::Unavailable(String::new()).is_retryable());
        assert!(!AdapterError::Timeout.is_retryable());
        assert!(!AdapterError::Malformed(String::new()).is_retryable());
    }
}
