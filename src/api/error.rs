//! Errors as the API answers them: `{"error":{"code":"…","message":"…"}}` with a status
//! that says whose problem it is.

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
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
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
