//! The officers' `POST /v1/revoke`: durable in the ledger together with its audit record
//! before the answer, and the issuer's CRL re-signed at once.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::body::read_json;
use super::crl::{self, ledger_error, unix_now};
use super::error::ApiError;
use super::identity::ClientIdentity;
use super::service::Service;
use crate::ledger::audit::AuditEvent;
use crate::ledger::certificates::{LedgerError, NewRevocation, Revocation, normalize_serial};
use crate::ledger::journal::Change;
use crate::ledger::recorder::RecordError;
use crate::pki::RevocationReason;

/// `POST /v1/revoke` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    /// Serial in hex, with or without `:` separators.
    serial: String,
    /// `key-compromise`, `superseded`, ...
    reason: String,
    /// The issuer the officer expects; refused if the serial is another's.
    issuer: Option<String>,
}

/// `POST /v1/revoke {serial, reason, issuer?}`: officers only. The revocation is durable in
/// the ledger and audited before the answer, and the issuer's CRL is re-signed at once.
pub async fn revoke(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let actor = identity.actor();
    let (error, audited) = match revoke_inner(&service, &identity, &headers, body).await {
        Ok(answer) => return Json(answer).into_response(),
        Err(Refusal { error, audited }) => (error, audited),
    };
    tracing::info!(%actor, code = error.code, message = %error.message, "revocation refused");
    if audited {
        return error.into_response();
    }
    let details =
        json!({ "status": error.status.as_u16(), "code": error.code, "message": error.message });
    match service.audit("revoke.refused", &actor, details).await {
        Ok(()) => error.into_response(),
        Err(audit_error) => audit_error.into_response(),
    }
}

/// The 409 for a certificate revoked already, as `error` describes it.
fn already_revoked(error: &LedgerError) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "already_revoked", error.to_string())
}

/// A refused revocation, and whether its audit record is written already.
struct Refusal {
    error: ApiError,
    audited: bool,
}

impl Refusal {
    /// A refusal the journal audited with the revocation it refused.
    fn audited(error: ApiError) -> Self {
        Refusal {
            error,
            audited: true,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            audited: false,
        }
    }
}

async fn revoke_inner(
    service: &Service,
    identity: &ClientIdentity,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, Refusal> {
    let identity = identity.require()?;
    let settings = service.settings();
    let officer = settings.policy.officer(identity).map_err(|denial| {
        ApiError::new(StatusCode::FORBIDDEN, "not_an_officer", denial.to_string())
    })?;
    let request: RevokeRequest = read_json(
        &service.server,
        headers,
        body,
        "a revocation {serial, reason, issuer?}",
    )
    .await?;
    let reason = RevocationReason::from_name(&request.reason).ok_or_else(|| {
        let names: Vec<&str> = RevocationReason::ALL.iter().map(|r| r.name()).collect();
        ApiError::bad_request(
            "bad_reason",
            format!(
                "reason {:?} is not one of {}",
                request.reason,
                names.join(", ")
            ),
        )
    })?;
    let serial = normalize_serial(&request.serial);
    let found = service
        .ledger
        .find(serial.clone())
        .await
        .map_err(ledger_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_serial",
                format!("no certificate with serial {serial} was issued here"),
            )
        })?;
    let issuer = settings
        .issuers
        .values()
        .find(|issuer| hex::encode(&issuer.view.key_identifier) == found.issuer_key_id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "other_issuer",
                format!(
                    "certificate {serial} was issued by a key ({}) that is no issuer of this appliance any more",
                    found.issuer_key_id
                ),
            )
        })?;
    if let Some(expected) = request
        .issuer
        .as_deref()
        .filter(|name| *name != issuer.name)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "other_issuer",
            format!(
                "certificate {serial} was issued by {}, not {expected}",
                issuer.name
            ),
        )
        .into());
    }
    // A second revocation is refused here; one racing another past this check is refused
    // by the ledger, and audited by the journal as `revoke.unrecorded`.
    if let Some(revoked_at) = service
        .ledger
        .revoked_at(serial.clone())
        .await
        .map_err(ledger_error)?
    {
        return Err(already_revoked(&LedgerError::AlreadyRevoked {
            serial: serial.clone(),
            revoked_at,
        })
        .into());
    }
    let revoked_at = unix_now();
    let revocation = NewRevocation {
        revocation: Revocation {
            serial: serial.clone(),
            reason,
            revoked_at,
        },
        officer: identity.to_owned(),
    };
    let event = AuditEvent {
        event: "revoke".into(),
        actor: identity.to_owned(),
        details: json!({
            "officer": officer.name,
            "serial": serial,
            "reason": reason.name(),
            "issuer": issuer.name,
            "subject": found.subject,
            "revoked_at": revoked_at,
        }),
    };
    // The revocation and its audit record are durable together, or neither is.
    service
        .recorder
        .record(Some(Change::Revoked(revocation)), event)
        .await
        .map_err(|error| match error {
            // Audited by the journal already, as `revoke.unrecorded`.
            RecordError::Ledger(refused) => Refusal::audited(match refused.as_ref() {
                LedgerError::AlreadyRevoked { .. } => already_revoked(&refused),
                LedgerError::UnknownSerial { .. } => {
                    ApiError::new(StatusCode::NOT_FOUND, "unknown_serial", refused.to_string())
                }
                other => ledger_error(other),
            }),
            unavailable => ApiError::unavailable(
                "ledger_unavailable",
                format!("the certificate was not revoked: {unavailable}"),
                std::time::Duration::from_secs(5),
            )
            .into(),
        })?;
    // The revocation stands even if the CRL cannot be signed now; the schedule retries.
    let crl_number = match crl::publish_crl(service, issuer, "revocation").await {
        Ok(crl) => Some(crl.number),
        Err(error) => {
            tracing::error!(error = %error.message, "revoked, but the CRL could not be re-signed yet");
            None
        }
    };
    Ok(json!({
        "serial": serial,
        "reason": reason.name(),
        "issuer": issuer.name,
        "revoked_at": revoked_at,
        "crl_number": crl_number,
    }))
}
