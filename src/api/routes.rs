//! The native API: `POST /v1/sign`, the bundles, issuer chains, health and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::service::Service;
use super::signing::{self, RequestContext};
use crate::duration::Seconds;

/// The client identity of the connection, or why its certificate gives none.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub Result<String, String>);

impl ClientIdentity {
    /// Who the audit log names as the actor: the identity, or `(unidentified)`.
    pub fn actor(&self) -> String {
        self.0.clone().unwrap_or_else(|_| "(unidentified)".into())
    }
}

/// The routes, over the shared service state.
pub fn router(service: Arc<Service>) -> Router {
    let vault = match &service.vault {
        Some(_) => super::vault::routes(&service.vault_mount()),
        None => Router::new(),
    };
    Router::new()
        .route("/v1/sign", post(sign))
        .route("/v1/bundle", get(bundle_pem))
        .route("/v1/bundle/spiffe", get(bundle_spiffe))
        .route("/v1/chain/{issuer}", get(chain))
        .route("/v1/crl/{issuer}", get(super::crl::crl))
        .route("/v1/revoke", post(super::crl::revoke))
        .route("/v1/reload", post(reload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(vault)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/api.md",
            )
        })
        .with_state(service)
}

/// The plain-HTTP operations routes: health, readiness and metrics, nothing else.
pub fn ops_router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the operations listener serves /healthz, /readyz and /metrics only",
            )
        })
        .with_state(service)
}

/// `POST /v1/sign` body (the native dialect).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    /// The CSR: PEM, or base64 of the DER.
    csr: String,
    /// The profile name.
    profile: String,
    /// The lifetime: seconds or `48h`-style; the profile's default when absent.
    ttl: Option<Seconds>,
}

async fn sign(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let settings = service.settings();
    let mut context = RequestContext::new(&identity);
    let result = async {
        let (identity, client) = signing::client(&settings, &identity)?;
        let body = read_json_body(&service, &headers, body).await?;
        let request: SignRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("the body is not a sign request {{csr, profile, ttl?}}: {e}"),
            )
        })?;
        context.describe(&request.profile, request.csr.as_bytes());
        let csr = csr_bytes(&request.csr)?;
        let request = signing::Request {
            profile: &request.profile,
            csr: &csr,
            ttl: request.ttl,
            overrides: signing::Overrides::default(),
        };
        signing::sign(&service, &settings, identity, client, &request, &context).await
    }
    .await;
    match signing::conclude(&service, &settings, &context, result, started).await {
        Ok(signed) => Json(json!({
            "certificate": signed.pem,
            // The new certificate and its issuers, without the root.
            "chain": format!(
                "{}{}",
                signed.pem,
                signed.issuer_path[..signed.issuer_path.len() - 1].concat()
            ),
            "roots": settings.bundle.pem,
            "serial": signed.serial,
            "not_after": rfc3339(signed.not_after),
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

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

/// Reads a JSON body (by its Content-Type) with [`read_body`].
pub(crate) async fn read_json_body(
    service: &Service,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
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
    read_body(service, headers, body).await
}

/// Reads a body of at most `server.max_body_bytes`, within `server.request_timeout`.
pub(crate) async fn read_body(
    service: &Service,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = service.server.max_body_bytes;
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
        service.server.request_timeout.duration(),
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

fn rfc3339(unix_seconds: u64) -> String {
    der::DateTime::from_unix_duration(Duration::from_secs(unix_seconds))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(crate) fn pem_response(pem: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()
}

async fn bundle_pem(State(service): State<Arc<Service>>) -> Response {
    pem_response(service.settings().bundle.pem.clone())
}

async fn bundle_spiffe(State(service): State<Arc<Service>>) -> Response {
    Json(service.settings().bundle.spiffe.clone()).into_response()
}

async fn chain(State(service): State<Arc<Service>>, Path(issuer): Path<String>) -> Response {
    let settings = service.settings();
    match settings.issuers.get(&issuer) {
        Some(issuer) => pem_response(issuer.chain_pem()),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_issuer",
            format!(
                "there is no issuer {issuer:?}; issuers: {}",
                settings
                    .issuers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into_response(),
    }
}

/// `POST /v1/reload`: officers only; the same as SIGHUP, with the verdict in the answer.
async fn reload(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
) -> Response {
    let actor = identity.actor();
    let officer = service
        .settings()
        .policy
        .officer(&actor)
        .map(|o| o.name.clone());
    match officer {
        Err(denial) => {
            service
                .audit_service_event(
                    "config.reload.refused",
                    json!({ "by": actor, "reason": denial.to_string() }),
                )
                .await;
            ApiError::new(StatusCode::FORBIDDEN, "not_an_officer", denial.to_string())
                .into_response()
        }
        Ok(_) => match service.reload(&actor).await {
            Ok(summary) => Json(json!({ "reloaded": summary })).into_response(),
            Err(reason) => ApiError::bad_request("reload_refused", reason).into_response(),
        },
    }
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(service): State<Arc<Service>>) -> Response {
    match service.readiness().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "failures": failures })),
        )
            .into_response(),
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics.render(&service.gauges()),
    )
        .into_response()
}
