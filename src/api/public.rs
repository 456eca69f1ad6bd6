//! The public listener (`[public]`): read-only, plain HTTP, no client certificate, for
//! relying parties. It serves the SPIFFE bundle at its configured path and, with
//! `[jwt] issuer_url`, the OIDC discovery document and the JWKS it names; nothing else (no
//! signing, officer, health or metrics endpoint is routed here).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::jwt_keys::{DISCOVERY_PATH, JWKS_PATH};
use super::service::Service;
use crate::config::PublicConfig;

/// The public routes, over the shared service state (so a reload's keys are served at once),
/// every request counted against `[public] requests_per_minute`.
pub fn public_router(service: Arc<Service>, config: &PublicConfig) -> Router {
    let (per_minute, burst) = (config.requests_per_minute, config.burst);
    Router::new()
        .route(&config.spiffe_bundle_path, get(spiffe_bundle))
        .route(DISCOVERY_PATH, get(discovery))
        .route(JWKS_PATH, get(jwks))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the public listener serves the SPIFFE bundle and OIDC discovery only",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            move |State(service): State<Arc<Service>>, request, next: Next| async move {
                match service.limiter.take(PUBLIC_BUCKET, per_minute, burst) {
                    Ok(()) => next.run(request).await,
                    Err(wait) => ApiError {
                        retry_after: Some(wait),
                        ..ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            format!(
                                "the public listener answers {per_minute} requests a minute (burst {burst}); retry later"
                            ),
                        )
                    }
                    .into_response(),
                }
            },
        ))
        .with_state(service)
}

/// The one rate bucket of the public listener (client buckets are named by identities,
/// which never look like this).
const PUBLIC_BUCKET: &str = "public listener";

/// A JSON document that relying parties may cache for a while.
fn json_document(value: &serde_json::Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        value.to_string(),
    )
        .into_response()
}

fn no_oidc() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "oidc_not_configured",
        "no OIDC discovery here: set [jwt] issuer_url",
    )
    .into_response()
}

async fn spiffe_bundle(State(service): State<Arc<Service>>) -> Response {
    json_document(&service.settings().bundle.spiffe)
}

async fn discovery(State(service): State<Arc<Service>>) -> Response {
    match service
        .settings()
        .jwt
        .as_ref()
        .and_then(|jwt| jwt.discovery())
    {
        Some(document) => json_document(document),
        None => no_oidc(),
    }
}

async fn jwks(State(service): State<Arc<Service>>) -> Response {
    let settings = service.settings();
    match settings.jwt.as_ref().filter(|jwt| jwt.issuer_url.is_some()) {
        Some(jwt) => json_document(jwt.jwks()),
        None => no_oidc(),
    }
}
