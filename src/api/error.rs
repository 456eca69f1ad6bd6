//! Errors as the API answers them: `{"error":{"code":"…","message":"…"}}` with a status
//! that says whose problem it is; and why the service cannot start or reload.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: status, a stable code and a message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`bad_csr`, `policy_denied`, `hsm_busy`, ...).
    pub code: &'static str,
    /// What went wrong and what to do about it. Never holds secrets.
    pub message: String,
    /// For 429 and 503: when to try again.
    pub retry_after: Option<Duration>,
    /// How much of `message` a dialect that keeps reasons from clients (Vault) shows.
    pub disclosure: Disclosure,
}

/// How much of a refusal a client is told by a dialect that keeps reasons to the audit log
/// (Vault's). The native API always shows the whole message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Disclosure {
    /// The whole message.
    #[default]
    Full,
    /// Only that permission was denied (a refused token, an unknown client).
    PermissionDenied,
    /// Only that a rate limit was hit (too many bad tokens).
    RateLimited,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            disclosure: Disclosure::Full,
        }
    }

    /// 400: the request cannot be used as sent.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 with Retry-After.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        ApiError {
            retry_after: Some(retry),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// True for refusals of the request (4xx), false for the service's own failures (5xx).
    pub fn is_refusal(&self) -> bool {
        self.status.is_client_error()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(retry) = self.retry_after {
            let seconds = retry.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits are a valid header"),
            );
        }
        response
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is incomplete or inconsistent.
    #[error("{0}")]
    Config(String),
    /// An issuer cannot be used.
    #[error("issuer {issuer}: {reason}")]
    Issuer {
        /// The `[issuers.<name>]`.
        issuer: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The HSM cannot be opened or used.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// The ledger cannot be opened.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::certificates::LedgerError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] crate::ledger::audit::AuditError),
    /// The SQLite ledger or its audit file.
    #[error(transparent)]
    SqliteJournal(#[from] crate::ledger::sqlite_journal::OpenError),
    /// The PostgreSQL store cannot be used.
    #[error(transparent)]
    Postgres(#[from] crate::ledger::postgres::PostgresError),
}

/// Why a reload was refused; the running settings stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file cannot be read or parsed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The file changes sections only a restart can change.
    #[error("{} changed; those sections need a restart (nothing was reloaded)", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// The new settings do not work (as they would refuse a start).
    #[error(transparent)]
    Settings(#[from] StartError),
    /// The blocking task that loads the file failed.
    #[error("the reload task failed: {0}")]
    Task(String),
    /// Loading did not finish in time: the HSM did not answer the key checks.
    #[error(
        "the reload did not finish within {} s: the HSM did not answer its key checks; the running configuration stays",
        .after.as_secs()
    )]
    TimedOut {
        /// How long it was given.
        after: std::time::Duration,
    },
}
