//! `POST /v1/jwt`: JWT-SVIDs signed in the HSM with the active key of `[jwt]`, under the
//! client's policy (`jwt_audiences`, `jwt_max_ttl`, its trust domains and path prefixes),
//! rate-limited and slotted like certificate signing, verified on the host after the HSM
//! signs, and audited (`jwt.issued` with the token's SHA-256, never the token; `jwt.refused`
//! or `jwt.failed`) before the answer leaves.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::body::read_json;
use super::error::ApiError;
use super::identity::ClientIdentity;
use super::metrics::Outcome;
use super::service::Service;
use super::settings::Settings;
use super::signing::{self, admit, audit_refused, hsm_unavailable, internal, policy_denied};
use crate::duration::Seconds;
use crate::pki::jwt::{self as jose, JwtSvidClaims, SigningInput};
use crate::pki::{self, SpiffeId};

/// The most audiences one token may carry.
const MAX_AUDIENCES: usize = 16;

/// `POST /v1/jwt` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRequest {
    /// The SPIFFE ID the token is for (its `sub`).
    spiffe_id: String,
    /// The audiences (`aud`), one or more.
    audience: Vec<String>,
    /// The lifetime: seconds or `5m`-style; `[jwt] default_ttl` when absent.
    ttl: Option<Seconds>,
}

/// What the audit record of a request says, filled in as the request is understood.
#[derive(Default)]
struct JwtContext {
    client: Option<String>,
    spiffe_id: Option<String>,
    audience: Vec<String>,
}

/// A token signed, verified and audited.
struct Issued {
    token: String,
    kid: String,
    exp: u64,
}

/// `POST /v1/jwt`.
pub(super) async fn issue(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let settings = service.settings();
    let actor = identity.actor();
    let mut context = JwtContext::default();
    let result = async {
        let (identity, client) = signing::client(&settings, &identity)?;
        context.client = Some(client.name.clone());
        let request: JwtRequest = read_json(
            &service.server,
            &headers,
            body,
            "a JWT request {spiffe_id, audience, ttl?}",
        )
        .await?;
        context.spiffe_id = Some(request.spiffe_id.clone());
        context.audience = request.audience.clone();
        issue_token(&service, &settings, identity, client, &request).await
    }
    .await;
    let result = match result {
        Ok(issued) => {
            service.metrics.count_jwt(Outcome::Issued);
            Ok(issued)
        }
        Err(error) => {
            service.metrics.count_jwt(Outcome::of_failure(&error));
            Err(audit_refusal(&service, &actor, &context, error).await)
        }
    };
    service.metrics.request_latency.observe(started.elapsed());
    match result {
        Ok(issued) => Json(json!({
            "token": issued.token,
            "kid": issued.kid,
            "expires_at": issued.exp,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Checks, signs, verifies and audits one token.
async fn issue_token(
    service: &Service,
    settings: &Settings,
    identity: &str,
    client: &crate::policy::ClientPolicy,
    request: &JwtRequest,
) -> Result<Issued, ApiError> {
    let jwt = settings.jwt.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "jwt_not_configured",
            "this appliance issues no JWT-SVIDs: it has no [jwt] section",
        )
    })?;
    let id = SpiffeId::parse(&request.spiffe_id)
        .map_err(|e| ApiError::bad_request("invalid_spiffe_id", e.to_string()))?;
    if id.path().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_spiffe_id",
            format!(
                "{:?} is a trust domain, not a workload: a JWT-SVID's subject has a path",
                request.spiffe_id
            ),
        ));
    }
    if request.audience.is_empty() {
        return Err(ApiError::bad_request(
            "bad_audience",
            "audience must list at least one audience",
        ));
    }
    if request.audience.len() > MAX_AUDIENCES || request.audience.iter().any(|a| a.is_empty()) {
        return Err(ApiError::bad_request(
            "bad_audience",
            format!("audience must list 1 to {MAX_AUDIENCES} non-empty audiences"),
        ));
    }
    let ttl = match request.ttl {
        Some(ttl) if ttl.0 == 0 => {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                "ttl must be above zero",
            ));
        }
        Some(ttl) if ttl > jwt.max_ttl => {
            return Err(ApiError::bad_request(
                "ttl_over_max",
                format!("the ttl {ttl} is over [jwt] max_ttl {}", jwt.max_ttl),
            ));
        }
        Some(ttl) => ttl,
        // The default, shortened to the client's maximum; one asked for explicitly is
        // refused above it.
        None => jwt.default_ttl.min(client.jwt_max_ttl),
    };
    client
        .allow_jwt(&id, &request.audience, ttl)
        .map_err(policy_denied)?;
    let _slot = admit(service, identity, client)?;

    let key = jwt.active();
    let iat = pki::now().unix_duration().as_secs();
    let claims = JwtSvidClaims {
        sub: id.to_string(),
        aud: request.audience.clone(),
        exp: iat + ttl.0,
        iat,
        iss: jwt.issuer_url.clone(),
    };
    let input = SigningInput::new(key.algorithm, &key.kid, &claims);
    let hsm_started = Instant::now();
    let signature = service
        .pool
        .sign(
            &key.key,
            key.algorithm.signature_algorithm(),
            input.as_bytes().to_vec(),
        )
        .await;
    service
        .metrics
        .hsm_sign_latency
        .observe(hsm_started.elapsed());
    let token = input
        .finish(&signature.map_err(hsm_unavailable)?)
        .map_err(internal)?;
    // Checked on the host before it leaves, as certificates are.
    jose::verify(&token, key.algorithm, &key.kid, key.key.public_key()).map_err(internal)?;
    let details = json!({
        "client": client.name,
        "spiffe_id": claims.sub,
        "audience": claims.aud,
        "iat": claims.iat,
        "exp": claims.exp,
        "kid": key.kid,
        "key_label": key.label,
        "sha256": crate::digest::sha256_hex(token.as_bytes()),
    });
    let record_started = Instant::now();
    service.audit("jwt.issued", identity, details).await?;
    service
        .metrics
        .record_latency
        .observe(record_started.elapsed());
    Ok(Issued {
        token,
        kid: key.kid.clone(),
        exp: claims.exp,
    })
}

/// Audits a refusal (`jwt.refused`) or failure (`jwt.failed`); returns the error to answer
/// with, or the 503 of an audit log that cannot be written.
async fn audit_refusal(
    service: &Service,
    actor: &str,
    context: &JwtContext,
    error: ApiError,
) -> ApiError {
    let request = json!({
        "client": context.client,
        "spiffe_id": context.spiffe_id,
        "audience": context.audience,
    });
    audit_refused(service, actor, "jwt", request, error).await
}
