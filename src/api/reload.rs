//! Reloading the configuration file (SIGHUP, `POST /v1/reload`) without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::crl;
use super::error::ReloadError;
use super::service::Service;
use super::settings::{FixedSections, Settings};
use crate::config::Config;

/// How many HSM operation timeouts a reload may take: its key checks wait up to two for a
/// control call before them to end (docs/hsm.md, "Calls that never return").
const RELOAD_WAITS_OP_TIMEOUTS: u32 = 4;

/// Reads the configuration file again and, if it is sound, puts its issuers, profiles,
/// policy and trust bundle in place for the requests that follow; requests in flight
/// finish under the settings they started with, and no connection is dropped. A file that
/// does not load, or that changes a section only a restart can change, is refused and the
/// running settings stay. Audited either way.
pub async fn reload(service: &Arc<Service>, actor: &str) -> Result<serde_json::Value, ReloadError> {
    let _one_at_a_time = service.reloading.lock().await;
    let loading = service.clone();
    // The key checks are HSM calls, which may never return: the reload answers regardless
    // (a hung call's thread is left behind; the next reload's checks use another session).
    let bound = service.pool.op_timeout() * RELOAD_WAITS_OP_TIMEOUTS;
    let loaded = tokio::time::timeout(bound, tokio::task::spawn_blocking(move || load(&loading)))
        .await
        .map_err(|_| ReloadError::TimedOut { after: bound })
        .and_then(|joined| joined.map_err(|e| ReloadError::Task(e.to_string())))
        .and_then(|result| result);
    match loaded {
        Ok(settings) => {
            let summary = serde_json::json!({
                "issuers": settings.issuers.keys().collect::<Vec<_>>(),
                "profiles": settings.profiles.iter().map(|(name, p)| (name.clone(), p.issuer.clone())).collect::<BTreeMap<_, _>>(),
                "roots": settings.bundle.roots.iter().map(|r| r.subject().to_string()).collect::<Vec<_>>(),
                "spiffe_sequence": settings.bundle.spiffe["spiffe_sequence"],
            });
            service.install(settings);
            tracing::info!(%summary, "configuration reloaded");
            service
                .audit_service_event(
                    "config.reloaded",
                    serde_json::json!({ "by": actor, "now": summary }),
                )
                .await;
            // New issuers get their CRL now rather than at the next minute.
            crl::refresh_crls(service).await;
            service.warn_expiring_issuers();
            Ok(summary)
        }
        Err(reason) => {
            tracing::warn!(%reason, "configuration reload refused; the running configuration stays");
            service
                .audit_service_event(
                    "config.reload.refused",
                    serde_json::json!({ "by": actor, "reason": reason.to_string() }),
                )
                .await;
            Err(reason)
        }
    }
}

/// The settings of the file as it is now, if it changes only what a reload may change.
fn load(service: &Service) -> Result<Settings, ReloadError> {
    let config = Config::load(&service.config_path)?;
    let changed = service.fixed.changed(&FixedSections::of(&config));
    if !changed.is_empty() {
        return Err(ReloadError::NeedsRestart(changed));
    }
    Ok(Settings::load(&config, &service.hsm, &service.ledger)?)
}
