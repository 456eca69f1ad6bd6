//! The CRLs of the online intermediates: signed in the HSM through the pool, numbered from the
//! ledger (a number never repeats, across restarts), re-signed on every revocation (see
//! [`super::revoke`]) and before `nextUpdate`, and served at `GET /v1/crl/{issuer}` (DER) and
//! `/v1/crl/{issuer}.pem`.

mod current;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use x509_cert::serial_number::SerialNumber;

pub use self::current::{Crls, CurrentCrl};
use super::error::ApiError;
use super::service::Service;
use super::settings::IssuerState;
use crate::ledger::CrlContents;
use crate::ledger::certificates::{LedgerError, StoredCrl};
use crate::pki::{self, CrlTemplate, RevokedEntry};

/// Now, Unix seconds.
pub(super) fn unix_now() -> i64 {
    pki::now().unix_duration().as_secs() as i64
}

/// A ledger failure as a 500.
pub(super) fn ledger_error(error: impl std::borrow::Borrow<LedgerError>) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ledger",
        error.borrow().to_string(),
    )
}

/// For every issuer: serve the CRL in the ledger, or sign a new one when there is none or
/// it is due (`crl.refresh_before` its `nextUpdate`). Run at start and every minute.
pub async fn refresh_crls(service: &Service) {
    let now = unix_now();
    let refresh_before = service.crls.config.refresh_before.0 as i64;
    let settings = service.settings();
    for issuer in settings.issuers.values() {
        let key_id = hex::encode(&issuer.view.key_identifier);
        let stored = service.ledger.latest_crl(key_id).await;
        let due = match stored {
            Ok(Some(crl)) if crl.next_update - refresh_before > now => {
                service.crls.set(
                    &issuer.name,
                    CurrentCrl {
                        der: crl.der,
                        number: crl.number,
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
        if due && let Err(error) = publish_crl(service, issuer, SCHEDULED).await {
            tracing::error!(issuer = %issuer.name, error = %error.message, "cannot sign the CRL; retrying in a minute");
        }
    }
}

/// The trigger of a CRL signed because the last one is due; another replica may have signed
/// its successor while this one waited for the lease.
const SCHEDULED: &str = "schedule";

/// How long a replica may hold an issuer's CRL lease: longer than signing and storing one
/// CRL takes, short enough that a replica that died holding it delays the others little.
const CRL_LEASE: Duration = Duration::from_secs(30);

/// How long [`publish_crl`] waits for another replica to finish signing the same issuer's
/// CRL before it gives up.
const CRL_LEASE_WAIT: Duration = Duration::from_secs(10);

/// Signs, stores, audits and serves a new CRL for `issuer`; `trigger` says why. One replica
/// at a time signs an issuer's CRLs: the others wait for the ledger's lease.
pub async fn publish_crl(
    service: &Service,
    issuer: &IssuerState,
    trigger: &str,
) -> Result<Arc<CurrentCrl>, ApiError> {
    let _one_at_a_time = service.crls.signing.lock().await;
    let key_id = hex::encode(&issuer.view.key_identifier);
    let holder = service.crls.holder.clone();
    let deadline = std::time::Instant::now() + CRL_LEASE_WAIT;
    loop {
        let now = unix_now();
        let until = now + CRL_LEASE.as_secs() as i64;
        if service
            .ledger
            .lease_crl(key_id.clone(), holder.clone(), now, until)
            .await
            .map_err(ledger_error)?
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "crl_busy",
                format!("another replica is signing the CRL of {}", issuer.name),
                Duration::from_secs(5),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = match fresh_crl(service, &key_id, trigger).await {
        Some(crl) => {
            service.crls.set(&issuer.name, crl);
            Ok(service.crls.get(&issuer.name).expect("just set"))
        }
        None => sign_crl(service, issuer, &key_id, trigger).await,
    };
    if let Err(error) = service.ledger.release_crl(key_id, holder).await {
        // It lapses by itself within CRL_LEASE.
        tracing::warn!(issuer = %issuer.name, %error, "cannot give the CRL lease up");
    }
    published
}

/// For a scheduled CRL, the one another replica signed meanwhile if it is not due yet.
async fn fresh_crl(service: &Service, key_id: &str, trigger: &str) -> Option<CurrentCrl> {
    if trigger != SCHEDULED {
        return None;
    }
    let refresh_before = service.crls.config.refresh_before.0 as i64;
    match service.ledger.latest_crl(key_id.to_owned()).await {
        Ok(Some(crl)) if crl.next_update - refresh_before > unix_now() => Some(CurrentCrl {
            der: crl.der,
            number: crl.number,
        }),
        _ => None,
    }
}

/// [`publish_crl`]'s work, with the lease held.
async fn sign_crl(
    service: &Service,
    issuer: &IssuerState,
    key_id: &str,
    trigger: &str,
) -> Result<Arc<CurrentCrl>, ApiError> {
    let key_id = key_id.to_owned();
    let CrlContents { number, revoked } = service
        .ledger
        .next_crl(key_id.clone())
        .await
        .map_err(ledger_error)?;
    let now = unix_now();
    let time = |at: i64| {
        der::DateTime::from_unix_duration(Duration::from_secs(at.max(0) as u64))
            .map_err(|e| e.to_string())
            .and_then(|t| pki::x509_time(t).map_err(|e| e.to_string()))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
    };
    let next_update = now + service.crls.config.validity.0 as i64;
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
                reason: revocation.reason,
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
    let signature = service
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
    service
        .ledger
        .store_crl(
            key_id,
            StoredCrl {
                number,
                this_update: now,
                next_update,
                der: der.clone(),
            },
        )
        .await
        .map_err(ledger_error)?;
    service
        .audit(
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
    service.crls.set(&issuer.name, CurrentCrl { der, number });
    Ok(service.crls.get(&issuer.name).expect("just set"))
}

/// Serves the ledger's latest CRL of `issuer` if it is newer than this replica's: another
/// replica signed it (after a revocation there).
async fn adopt_newer_crl(service: &Service, issuer: &str) {
    let Some(key_id) = service
        .settings()
        .issuers
        .get(issuer)
        .map(|state| hex::encode(&state.view.key_identifier))
    else {
        return;
    };
    match service.ledger.latest_crl(key_id).await {
        Ok(Some(stored)) => service.crls.set(
            issuer,
            CurrentCrl {
                der: stored.der,
                number: stored.number,
            },
        ),
        Ok(None) => {}
        // The CRL held is served; the next request asks again.
        Err(error) => tracing::warn!(issuer, %error, "cannot read the latest CRL from the ledger"),
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
    if service.crls.stale(issuer) {
        adopt_newer_crl(&service, issuer).await;
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
