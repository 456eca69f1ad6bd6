//! The CRLs of the online intermediates: signed in the HSM through the pool, numbered from the
//! ledger (a number never repeats, across restarts), re-signed on every revocation and before
//! `nextUpdate`, and served at `GET /v1/crl/{issuer}` (DER) and `/v1/crl/{issuer}.pem`. And
//! the officers' `POST /v1/revoke`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use x509_cert::serial_number::SerialNumber;

use super::config::CrlConfig;
use super::error::ApiError;
use super::routes::{ClientIdentity, read_json_body};
use super::service::{IssuerState, Service};
use crate::ledger::certificates::{CertificateStore, LedgerError, StoredCrl, normalize_serial};
use crate::pki::{self, CrlTemplate, RevocationReason, RevokedEntry};

/// A signed CRL, ready to serve.
#[derive(Clone, Debug)]
pub struct CurrentCrl {
    /// DER.
    pub der: Vec<u8>,
    /// Its number.
    pub number: u64,
    /// `nextUpdate`, Unix seconds.
    pub next_update: i64,
}

/// The current CRL of each issuer, and how CRLs are made.
pub struct Crls {
    config: CrlConfig,
    current: Mutex<HashMap<String, Arc<CurrentCrl>>>,
    /// One CRL is signed at a time, so numbers are taken and stored in order.
    signing: tokio::sync::Mutex<()>,
}

impl Crls {
    /// No CRLs yet; `config` says how long they live.
    pub fn new(config: CrlConfig) -> Self {
        Crls {
            config,
            current: Mutex::new(HashMap::new()),
            signing: tokio::sync::Mutex::new(()),
        }
    }

    fn get(&self, issuer: &str) -> Option<Arc<CurrentCrl>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .cloned()
    }

    fn set(&self, issuer: &str, crl: CurrentCrl) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(issuer.to_owned(), Arc::new(crl));
    }
}

fn unix_now() -> i64 {
    pki::now().unix_duration().as_secs() as i64
}

fn ledger_error(error: LedgerError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ledger",
        error.to_string(),
    )
}

impl Service {
    /// For every issuer: serve the CRL in the ledger, or sign a new one when there is none or
    /// it is due (`crl.refresh_before` its `nextUpdate`). Run at start and every minute.
    pub async fn refresh_crls(&self) {
        let now = unix_now();
        let refresh_before = self.crls.config.refresh_before.0 as i64;
        let settings = self.settings();
        for issuer in settings.issuers.values() {
            let key_id = hex::encode(&issuer.view.key_identifier);
            let stored = self
                .ledger_admin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .latest_crl(&key_id);
            let due = match stored {
                Ok(Some(crl)) if crl.next_update - refresh_before > now => {
                    self.crls.set(
                        &issuer.name,
                        CurrentCrl {
                            der: crl.der,
                            number: crl.number,
                            next_update: crl.next_update,
                        },
                    );
                    false
                }
                Ok(_) => true,
                Err(error) => {
                    tracing::error!(issuer = %issuer.name, %error, "cannot read the CRL from the ledger");
                    false
                }
            };
            if due && let Err(error) = self.publish_crl(issuer, "schedule").await {
                tracing::error!(issuer = %issuer.name, error = %error.message, "cannot sign the CRL; retrying in a minute");
            }
        }
    }

    /// Signs, stores, audits and serves a new CRL for `issuer`; `trigger` says why.
    pub async fn publish_crl(
        &self,
        issuer: &IssuerState,
        trigger: &str,
    ) -> Result<Arc<CurrentCrl>, ApiError> {
        let _one_at_a_time = self.crls.signing.lock().await;
        let key_id = hex::encode(&issuer.view.key_identifier);
        let (number, revoked) = {
            let ledger = self.ledger_admin.lock().unwrap_or_else(|e| e.into_inner());
            let last = ledger.latest_crl(&key_id).map_err(ledger_error)?;
            (
                last.map_or(1, |crl| crl.number + 1),
                ledger.revoked(&key_id).map_err(ledger_error)?,
            )
        };
        let now = unix_now();
        let time = |at: i64| {
            der::DateTime::from_unix_duration(Duration::from_secs(at.max(0) as u64))
                .map_err(|e| e.to_string())
                .and_then(|t| pki::x509_time(t).map_err(|e| e.to_string()))
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
        };
        let next_update = now + self.crls.config.validity.0 as i64;
        let entries = revoked
            .iter()
            .map(|revocation| {
                let bytes = hex::decode(&revocation.serial).map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger", e.to_string())
                })?;
                Ok(RevokedEntry {
                    serial: SerialNumber::new(&bytes).map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger", e.to_string())
                    })?,
                    revoked_at: time(revocation.revoked_at)?,
                    reason: RevocationReason::from_name(&revocation.reason)
                        .unwrap_or(RevocationReason::Unspecified),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let template = CrlTemplate {
            number,
            this_update: time(now)?,
            next_update: time(next_update)?,
            signature_algorithm: issuer.algorithm,
            revoked: entries,
        };
        let internal = |e: pki::PkiError| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        };
        let prepared = template.prepare(&issuer.view).map_err(internal)?;
        let signature = self
            .pool
            .sign(&issuer.key, issuer.algorithm, prepared.tbs_der().to_vec())
            .await
            .map_err(|e| {
                ApiError::unavailable(
                    "hsm_unavailable",
                    format!("the CRL could not be signed: {e}"),
                    Duration::from_secs(5),
                )
            })?;
        let der = prepared.finish(&signature).map_err(internal)?;
        self.ledger_admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .store_crl(
                &key_id,
                &StoredCrl {
                    number,
                    this_update: now,
                    next_update,
                    der: der.clone(),
                },
            )
            .map_err(ledger_error)?;
        self.audit(
            "crl.published",
            "hsmca",
            json!({
                "issuer": issuer.name,
                "number": number,
                "revoked": revoked.len(),
                "next_update": next_update,
                "trigger": trigger,
                "sha256": crate::digest::sha256_hex(&der),
            }),
        )
        .await?;
        tracing::info!(issuer = %issuer.name, number, revoked = revoked.len(), trigger, "CRL published");
        self.crls.set(
            &issuer.name,
            CurrentCrl {
                der,
                number,
                next_update,
            },
        );
        Ok(self.crls.get(&issuer.name).expect("just set"))
    }
}

/// `GET /v1/crl/{issuer}` (DER) and `GET /v1/crl/{issuer}.pem`.
pub async fn crl(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    let (issuer, pem) = match name.strip_suffix(".pem") {
        Some(issuer) => (issuer, true),
        None => (name.as_str(), false),
    };
    if !service.settings().issuers.contains_key(issuer) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_issuer",
            format!("there is no issuer {issuer:?}"),
        )
        .into_response();
    }
    match service.crls.get(issuer) {
        Some(crl) if pem => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pki::to_pem("X509 CRL", &crl.der),
        )
            .into_response(),
        Some(crl) => (
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            crl.der.clone(),
        )
            .into_response(),
        None => ApiError::unavailable(
            "crl_unavailable",
            format!("no CRL of {issuer} is signed yet; it is retried every minute"),
            Duration::from_secs(60),
        )
        .into_response(),
    }
}

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
    let error = match revoke_inner(&service, &identity, &headers, body).await {
        Ok(answer) => return Json(answer).into_response(),
        Err(error) => error,
    };
    tracing::info!(%actor, code = error.code, message = %error.message, "revocation refused");
    let details =
        json!({ "status": error.status.as_u16(), "code": error.code, "message": error.message });
    match service.audit("revoke.refused", &actor, details).await {
        Ok(()) => error.into_response(),
        Err(audit_error) => audit_error.into_response(),
    }
}

async fn revoke_inner(
    service: &Service,
    identity: &ClientIdentity,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, ApiError> {
    let identity = identity.0.as_ref().map_err(|reason| {
        ApiError::new(StatusCode::FORBIDDEN, "client_unidentified", reason.clone())
    })?;
    let settings = service.settings();
    let officer = settings.policy.officer(identity).map_err(|denial| {
        ApiError::new(StatusCode::FORBIDDEN, "not_an_officer", denial.to_string())
    })?;
    let body = read_json_body(service, headers, body).await?;
    let request: RevokeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the body is not a revocation {{serial, reason, issuer?}}: {e}"),
        )
    })?;
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
        .ledger_admin
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .find(&serial)
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
        ));
    }
    let revoked_at = unix_now();
    service
        .ledger_admin
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .revoke(&serial, reason.name(), revoked_at, identity)
        .map_err(|error| match error {
            LedgerError::AlreadyRevoked { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_revoked", error.to_string())
            }
            other => ledger_error(other),
        })?;
    service
        .audit(
            "revoke",
            identity,
            json!({
                "officer": officer.name,
                "serial": serial,
                "reason": reason.name(),
                "issuer": issuer.name,
                "subject": found.subject,
                "revoked_at": revoked_at,
            }),
        )
        .await?;
    // The revocation stands even if the CRL cannot be signed now; the schedule retries.
    let crl_number = match service.publish_crl(issuer, "revocation").await {
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
