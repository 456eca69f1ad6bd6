//! The native API: `POST /v1/sign`, `POST /v1/jwt`, the bundles, issuer chains, health and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::body::{csr_bytes, pem_response, read_json};
use super::error::{ApiError, ReloadError};
use super::identity::ClientIdentity;
use super::service::Service;
use super::signing::{self, RequestContext};
use crate::duration::Seconds;

/// The routes, over the shared service state.
pub fn router(service: Arc<Service>) -> Router {
    let vault = match &service.vault {
        Some(vault) => super::vault::routes(vault.mount()),
        None => Router::new(),
    };
    Router::new()
        .route("/v1/sign", post(sign))
        .route("/v1/jwt", post(super::jwt::issue))
        .route("/v1/bundle", get(bundle_pem))
        .route("/v1/bundle/spiffe", get(bundle_spiffe))
        .route("/v1/chain/{issuer}", get(chain))
        .route("/v1/crl/{issuer}", get(super::crl::crl))
        .route("/v1/revoke", post(super::revoke::revoke))
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
        let request: SignRequest = read_json(
            &service.server,
            &headers,
            body,
            "a sign request {csr, profile, ttl?}",
        )
        .await?;
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

fn rfc3339(unix_seconds: u64) -> String {
    der::DateTime::from_unix_duration(Duration::from_secs(unix_seconds))
        .map(|t| t.to_string())
        .unwrap_or_default()
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
        Ok(_) => match super::reload::reload(&service, &actor).await {
            Ok(summary) => Json(json!({ "reloaded": summary })).into_response(),
            Err(reason @ ReloadError::TimedOut { .. }) => ApiError::unavailable(
                "reload_timed_out",
                reason.to_string(),
                Duration::from_secs(5),
            )
            .into_response(),
            Err(reason) => {
                ApiError::bad_request("reload_refused", reason.to_string()).into_response()
            }
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
    let mut gauges = service.gauges();
    // A ledger that cannot be read leaves the gauge out (readiness reports the ledger).
    gauges.client_cas = service.client_cas().await.ok();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics.render(&gauges),
    )
        .into_response()
}
