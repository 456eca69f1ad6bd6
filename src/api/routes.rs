//! The native API: `POST /v1/sign`, the bundles, issuer chains, health and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use der::Decode;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::metrics::Outcome;
use super::service::Service;
use crate::duration::Seconds;
use crate::hsm::HsmError;
use crate::ledger::audit::AuditEvent;
use crate::ledger::certificates::IssuedCertificate;
use crate::pki::{self, CsrError, Template};

/// The client identity of the connection, or why its certificate gives none.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub Result<String, String>);

/// The routes, over the shared service state.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/sign", post(sign))
        .route("/v1/bundle", get(bundle_pem))
        .route("/v1/bundle/spiffe", get(bundle_spiffe))
        .route("/v1/chain/{issuer}", get(chain))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/api.md",
            )
        })
        .with_state(service)
}

/// `POST /v1/sign` body.
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

/// What a refusal or issuance is about, for the audit record and metrics.
struct RequestContext {
    identity: String,
    profile: String,
    csr_sha256: Option<String>,
}

async fn sign(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut context = RequestContext {
        identity: identity
            .0
            .clone()
            .unwrap_or_else(|_| "(unidentified)".into()),
        profile: String::new(),
        csr_sha256: None,
    };
    let result = issue(&service, &identity, &headers, body, &mut context).await;
    // Only configured profile names become metric labels; the rest of the request is
    // untrusted text.
    let profile_label = if service.profiles.contains_key(&context.profile) {
        context.profile.as_str()
    } else {
        "(none)"
    };
    let response = match result {
        Ok(body) => {
            service
                .metrics
                .count_request(profile_label, Outcome::Issued);
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(error) => {
            let outcome = if error.is_refusal() {
                Outcome::Refused
            } else {
                Outcome::Unavailable
            };
            service.metrics.count_request(profile_label, outcome);
            refuse(&service, &context, error).await
        }
    };
    service.metrics.request_latency.observe(started.elapsed());
    response
}

/// Audits a refusal or failure, then answers it. If even the audit record cannot be written
/// the answer is a 503: nothing goes unrecorded silently.
async fn refuse(service: &Service, context: &RequestContext, error: ApiError) -> Response {
    tracing::info!(
        client = %context.identity,
        profile = %context.profile,
        status = error.status.as_u16(),
        code = error.code,
        message = %error.message,
        "signing request refused"
    );
    let event = AuditEvent {
        event: if error.is_refusal() {
            "sign.refused".into()
        } else {
            "sign.failed".into()
        },
        actor: context.identity.clone(),
        details: json!({
            "profile": context.profile,
            "status": error.status.as_u16(),
            "code": error.code,
            "message": error.message,
            "csr_sha256": context.csr_sha256,
        }),
    };
    match service.recorder.record(None, event).await {
        Ok(_) => error.into_response(),
        Err(record_error) => ApiError::unavailable(
            "audit_unavailable",
            format!("the request was not served and could not be audited: {record_error}"),
            Duration::from_secs(5),
        )
        .into_response(),
    }
}

async fn issue(
    service: &Service,
    identity: &ClientIdentity,
    headers: &HeaderMap,
    body: Body,
    context: &mut RequestContext,
) -> Result<Value, ApiError> {
    let identity = identity.0.as_ref().map_err(|reason| {
        ApiError::new(StatusCode::FORBIDDEN, "client_unidentified", reason.clone())
    })?;
    let client = service.policy.client(identity).map_err(policy_denied)?;
    let body = read_json_body(service, headers, body).await?;
    let request: SignRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the body is not a sign request {{csr, profile, ttl?}}: {e}"),
        )
    })?;
    context.profile = request.profile.clone();
    context.csr_sha256 = Some(crate::digest::sha256_hex(request.csr.as_bytes()));
    let profile = service.profiles.get(&request.profile).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_profile",
            format!("there is no profile {:?}", request.profile),
        )
    })?;
    client
        .allow_profile(&request.profile)
        .map_err(policy_denied)?;
    if let Err(wait) = service
        .limiter
        .take(identity, client.requests_per_minute, client.burst)
    {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "denied by policy rule client.requests_per_minute: client {} is over {} requests per minute (burst {})",
                    client.name, client.requests_per_minute, client.burst
                ),
            )
        });
    }
    let csr_bytes = csr_bytes(&request.csr)?;
    let csr = pki::verify_csr(&csr_bytes).map_err(|e| {
        let code = match e {
            CsrError::Key(_) => "weak_or_unsupported_key",
            CsrError::Signature(_) => "bad_csr_signature",
            _ => "bad_csr",
        };
        ApiError::bad_request(code, e.to_string())
    })?;
    let names = profile
        .requested_names(&csr)
        .map_err(|e| ApiError::bad_request(e.code, e.message))?;
    // Without a requested ttl the profile's default applies, shortened to the client's
    // maximum; a ttl asked for explicitly is refused above either maximum.
    let ttl = profile
        .ttl(Some(
            request
                .ttl
                .unwrap_or(profile.default_ttl.min(client.max_ttl)),
        ))
        .map_err(|e| ApiError::bad_request(e.code, e.message))?;
    client.allow_request(&names, ttl).map_err(policy_denied)?;

    let issuer = &service.issuers[&profile.issuer];
    let template = profile
        .template(
            &csr,
            &names,
            ttl,
            &issuer.view,
            issuer.algorithm,
            pki::now().unix_duration(),
        )
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code, e.message))?;
    let serial = service.serials.next().await.map_err(hsm_unavailable)?;
    let prepared = template.prepare(serial, &issuer.view).map_err(internal)?;
    let hsm_started = Instant::now();
    let signature = service
        .pool
        .sign(&issuer.key, issuer.algorithm, prepared.tbs_der().to_vec())
        .await;
    service
        .metrics
        .hsm_sign_latency
        .observe(hsm_started.elapsed());
    let der = prepared
        .finish(&signature.map_err(hsm_unavailable)?)
        .map_err(internal)?;

    let certificate = x509_cert::Certificate::from_der(&der).map_err(internal)?;
    let tbs = &certificate.tbs_certificate;
    let serial_hex = hex::encode(tbs.serial_number.as_bytes());
    let not_after = tbs.validity.not_after.to_unix_duration().as_secs();
    let sans = match &template {
        Template::Ca(t) => t.spiffe_id.iter().cloned().collect(),
        Template::Leaf(t) => std::iter::once(t.spiffe_id.clone())
            .chain(t.dns_names.iter().cloned())
            .collect::<Vec<_>>(),
    };
    let row = IssuedCertificate {
        serial: serial_hex.clone(),
        issuer_key_id: hex::encode(&issuer.view.key_identifier),
        subject: tbs.subject.to_string(),
        sans: sans.clone(),
        profile: request.profile.clone(),
        client: identity.clone(),
        not_before: tbs.validity.not_before.to_unix_duration().as_secs() as i64,
        not_after: not_after as i64,
        der: der.clone(),
    };
    let event = AuditEvent {
        event: "sign.issued".into(),
        actor: identity.clone(),
        details: json!({
            "client": client.name,
            "profile": request.profile,
            "issuer": issuer.name,
            "serial": serial_hex,
            "subject": row.subject,
            "sans": sans,
            "not_before": tbs.validity.not_before.to_string(),
            "not_after": tbs.validity.not_after.to_string(),
            "certificate_sha256": crate::digest::sha256_hex(&der),
            "csr_sha256": context.csr_sha256,
        }),
    };
    let record_started = Instant::now();
    // The certificate leaves only once its ledger row and audit record are durable.
    service
        .recorder
        .record(Some(row), event)
        .await
        .map_err(|e| {
            ApiError::unavailable(
                "ledger_unavailable",
                format!("the certificate was not issued: {e}"),
                Duration::from_secs(5),
            )
        })?;
    service
        .metrics
        .record_latency
        .observe(record_started.elapsed());
    let pem = pki::to_pem("CERTIFICATE", &der);
    Ok(json!({
        "certificate": pem,
        "chain": format!("{pem}{}", issuer.chain_pem()),
        "roots": service.bundle.pem,
        "serial": serial_hex,
        "not_after": rfc3339(not_after),
    }))
}

/// The CSR as sent: PEM text, or base64 of the DER.
fn csr_bytes(csr: &str) -> Result<Vec<u8>, ApiError> {
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

/// Reads a JSON body of at most `server.max_body_bytes`.
async fn read_json_body(
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

fn policy_denied(denial: crate::policy::Denial) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "policy_denied", denial.to_string())
}

fn hsm_unavailable(error: HsmError) -> ApiError {
    match error {
        HsmError::Busy { .. } => ApiError::unavailable(
            "hsm_busy",
            format!("{error}; retry shortly"),
            Duration::from_secs(1),
        ),
        HsmError::Timeout { .. } => {
            ApiError::unavailable("hsm_timeout", error.to_string(), Duration::from_secs(2))
        }
        other => ApiError::unavailable(
            "hsm_unavailable",
            format!("the HSM cannot sign right now: {other}"),
            Duration::from_secs(5),
        ),
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "signing failed inside hsmca");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the certificate could not be made: {error}"),
    )
}

fn rfc3339(unix_seconds: u64) -> String {
    der::DateTime::from_unix_duration(Duration::from_secs(unix_seconds))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn pem_response(pem: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response()
}

async fn bundle_pem(State(service): State<Arc<Service>>) -> Response {
    pem_response(service.bundle.pem.clone())
}

async fn bundle_spiffe(State(service): State<Arc<Service>>) -> Response {
    Json(service.bundle.spiffe.clone()).into_response()
}

async fn chain(State(service): State<Arc<Service>>, Path(issuer): Path<String>) -> Response {
    match service.issuers.get(&issuer) {
        Some(issuer) => pem_response(issuer.chain_pem()),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_issuer",
            format!(
                "there is no issuer {issuer:?}; issuers: {}",
                service
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
