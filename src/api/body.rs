//! Request and response bodies every dialect shares: reading a body within the limits of
//! `[server]`, the CSR field as sent, and PEM answers.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::error::ApiError;
use crate::config::ServerConfig;

/// The CSR as sent: PEM text, or base64 of the DER.
pub(crate) fn csr_bytes(csr: &str) -> Result<Vec<u8>, ApiError> {
    use base64ct::{Base64, Encoding};
    let text = csr.trim();
    if text.starts_with("-----BEGIN") {
        return Ok(text.as_bytes().to_vec());
    }
    Base64::decode_vec(text).map_err(|_| {
        ApiError::bad_request(
            "bad_csr",
            "the csr field is neither a PEM CERTIFICATE REQUEST nor base64 DER",
        )
    })
}

/// Reads a JSON body (by its Content-Type) with [`read_body`] and parses it as `T`; a body
/// that is not one is refused as `bad_json`, naming `shape` ("a sign request {csr, …}").
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    server: &ServerConfig,
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json, not {content_type:?}"),
        ));
    }
    let body = read_body(server, headers, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not {shape}: {e}")))
}

/// Reads a body of at most `server.max_body_bytes`, within `server.request_timeout`.
pub(crate) async fn read_body(
    server: &ServerConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the {limit}-byte limit"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        server.request_timeout.duration(),
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        )
    })?;
    match collected {
        Ok(body) => Ok(body.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(
            "bad_body",
            format!("the body could not be read: {error}"),
        )),
    }
}

/// A PEM answer (`application/x-pem-file`).
pub(crate) fn pem_response(pem: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()
}
