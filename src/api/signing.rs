//! One signing pipeline for every dialect (the native API, the Vault-compatible endpoints):
//! who is asking, may they, does the CSR fit the profile, sign in the HSM, record durably,
//! and count and audit whatever the outcome was.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tokio::sync::{SemaphorePermit, oneshot};
use x509_cert::name::Name;

use super::error::ApiError;
use super::identity::ClientIdentity;
use super::metrics::Outcome;
use super::service::Service;
use super::settings::{IssuerState, Settings};
use crate::duration::Seconds;
use crate::hsm::{HsmError, Then};
use crate::ledger::audit::AuditEvent;
use crate::ledger::certificates::IssuedCertificate;
use crate::ledger::journal::Change;
use crate::ledger::recorder::{Expected, RecordError, Submitter};
use crate::pki::{self, CsrError, Profile, Template};
use crate::policy::ClientPolicy;

/// What a refusal or issuance is about, for the audit record and the metrics.
pub(crate) struct RequestContext {
    identity: String,
    profile: String,
    csr_sha256: Option<String>,
}

impl RequestContext {
    /// A context for a request on a connection with `identity`.
    pub(crate) fn new(identity: &ClientIdentity) -> Self {
        RequestContext {
            identity: identity.actor(),
            profile: String::new(),
            csr_sha256: None,
        }
    }

    /// Notes the profile asked for and the CSR as sent, once the body is read.
    pub(crate) fn describe(&mut self, profile: &str, csr: &[u8]) {
        self.profile = profile.to_owned();
        self.csr_sha256 = Some(crate::digest::sha256_hex(csr));
    }
}

/// Names a dialect takes from its request body instead of from the CSR (Vault's
/// `uri_sans`, `alt_names`, `common_name`). They pass the same profile and policy checks.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    /// Replaces the CSR's URI SANs.
    pub uri_sans: Option<Vec<String>>,
    /// Replaces the CSR's DNS SANs.
    pub dns_sans: Option<Vec<String>>,
    /// Replaces the CSR's subject.
    pub subject: Option<Name>,
}

/// A signing request, whatever dialect it came in.
pub(crate) struct Request<'a> {
    /// The profile name.
    pub profile: &'a str,
    /// The CSR, PEM or DER.
    pub csr: &'a [u8],
    /// The lifetime asked for, if any.
    pub ttl: Option<Seconds>,
    /// Names from the request body.
    pub overrides: Overrides,
}

/// A certificate issued and recorded.
pub(crate) struct Signed {
    /// PEM.
    pub pem: String,
    /// Serial, lower-case hex.
    pub serial: String,
    /// `notAfter`, Unix seconds.
    pub not_after: u64,
    /// The issuer's certificate, its intermediates and last the root (PEM, one per entry).
    pub issuer_path: Vec<String>,
}

/// The connection's client and its policy entry; refused when either is missing.
pub(crate) fn client<'s>(
    settings: &'s Settings,
    identity: &'s ClientIdentity,
) -> Result<(&'s str, &'s ClientPolicy), ApiError> {
    let identity = identity.require()?;
    let client = settings.policy.client(identity).map_err(policy_denied)?;
    Ok((identity, client))
}

/// Policy, profile, HSM, ledger: issues the certificate or says why not. Refusals are not
/// audited here; [`conclude`] does that for every outcome.
pub(crate) async fn sign(
    service: &Service,
    settings: &Settings,
    identity: &str,
    client: &ClientPolicy,
    request: &Request<'_>,
    context: &RequestContext,
) -> Result<Signed, ApiError> {
    let (profile, _slot) = authorize(service, settings, identity, client, request)?;
    // Every profile's issuer is configured: the settings were checked so.
    let issuer = &settings.issuers[&profile.issuer];
    let template = build(service, profile, issuer, client, request).await?;
    sign_and_record(
        service, identity, client, request, context, issuer, &template,
    )
    .await
}

/// Step 1: the profile exists and the client may use it, a slot is free, and the client is
/// within its rate. The slot is held until the certificate is recorded: the expensive part
/// (CSR check, HSM, ledger).
fn authorize<'s>(
    service: &'s Service,
    settings: &'s Settings,
    identity: &str,
    client: &ClientPolicy,
    request: &Request<'_>,
) -> Result<(&'s Profile, SemaphorePermit<'s>), ApiError> {
    let profile = settings.profiles.get(request.profile).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_profile",
            format!("there is no profile {:?}", request.profile),
        )
    })?;
    client
        .allow_profile(request.profile)
        .map_err(policy_denied)?;
    let slot = admit(service, identity, client)?;
    Ok((profile, slot))
}

/// A slot among `server.max_in_flight`, then the client's rate: both refusals answered before
/// any expensive work. Shared by every request that signs in the HSM (certificates and
/// JWT-SVIDs); the slot is held until the result is recorded.
pub(crate) fn admit<'s>(
    service: &'s Service,
    identity: &str,
    client: &ClientPolicy,
) -> Result<SemaphorePermit<'s>, ApiError> {
    let slot = service.in_flight.try_acquire().map_err(|_| {
        ApiError::unavailable(
            "overloaded",
            format!(
                "{} signing requests are in progress, the most this appliance takes at once (server.max_in_flight); retry shortly",
                service.server.max_in_flight
            ),
            Duration::from_secs(1),
        )
    })?;
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
    Ok(slot)
}

/// Step 2: the CSR is verified, the dialect's names replace its own, and the names and
/// lifetime pass the profile and the client's policy; the result is the certificate's
/// template.
async fn build(
    service: &Service,
    profile: &Profile,
    issuer: &IssuerState,
    client: &ClientPolicy,
    request: &Request<'_>,
) -> Result<Template, ApiError> {
    let csr_bytes = request.csr.to_vec();
    let verified = service
        .verifier
        .run(service.lightly_loaded(), move || {
            pki::verify_csr(&csr_bytes)
        })
        .await
        .map_err(internal)?;
    let mut csr = verified.map_err(|e| {
        let code = match e {
            CsrError::Key(_) => "weak_or_unsupported_key",
            CsrError::Signature(_) => "bad_csr_signature",
            _ => "bad_csr",
        };
        ApiError::bad_request(code, e.to_string())
    })?;
    if let Some(uris) = &request.overrides.uri_sans {
        csr.uri_sans = uris.clone();
    }
    if let Some(names) = &request.overrides.dns_sans {
        csr.dns_sans = names.clone();
    }
    if let Some(subject) = &request.overrides.subject {
        csr.subject = subject.clone();
    }
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
    profile
        .template(
            &csr,
            &names,
            ttl,
            &issuer.view,
            issuer.algorithm,
            issuer.crl_url.as_deref(),
            pki::now().unix_duration(),
        )
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.code, e.message))
}

/// Steps 3 and 4: a serial from the HSM's RNG, the TBS prepared and checked, signed in the
/// HSM, the signed certificate checked against the TBS, and its ledger row and audit record
/// made durable before the certificate leaves.
///
/// At light load the check and the hand-off to the recorder run on the HSM session's thread
/// as soon as the signature is there ([`SignerPool::sign_then`](crate::hsm::SignerPool)), so
/// the request is woken once, by the recorder, instead of once by the HSM and again by the
/// recorder: a wake-up of a sleeping async worker costs more CPU than the check on a VM
/// (docs/performance.md). The request still gives up at the HSM's operation timeout if the
/// signature has not come by then, and the session's thread then records nothing
/// ([`Handover`]). Under load the steps stay apart ([`step_by_step`]): the HSM's replies go
/// out in batches, and the check runs on the verify threads, not on the sessions the HSM's
/// throughput needs (moved to the sessions it cost 3 to 9 % of the throughput at 64 and 256
/// connections).
async fn sign_and_record(
    service: &Service,
    identity: &str,
    client: &ClientPolicy,
    request: &Request<'_>,
    context: &RequestContext,
    issuer: &IssuerState,
    template: &Template,
) -> Result<Signed, ApiError> {
    let serial = service
        .serials
        .next(&service.pool)
        .await
        .map_err(hsm_unavailable)?;
    let serial_hex = hex::encode(serial.as_bytes());
    let prepared = template.prepare(serial, &issuer.view).map_err(internal)?;
    let not_after = template.validity().not_after.to_unix_duration().as_secs();
    let (row, event) = describe(
        template,
        issuer,
        identity,
        client,
        request,
        context,
        &serial_hex,
    );
    let unsigned = Unsigned {
        prepared,
        row,
        event,
    };
    // The recorder holds its next group open for this certificate while the HSM signs it.
    let announcement = service.recorder.expect();
    let started = Instant::now();
    let recorded = if service.lightly_loaded() {
        on_the_session(service, issuer, unsigned, announcement, started).await?
    } else {
        step_by_step(service, issuer, unsigned, announcement, started).await?
    };
    match recorded {
        Ok(Recorded {
            der,
            hsm_took,
            record_took,
        }) => {
            service.metrics.hsm_sign_latency.observe(hsm_took);
            service.metrics.record_latency.observe(record_took);
            Ok(Signed {
                pem: pki::to_pem("CERTIFICATE", &der),
                serial: serial_hex,
                not_after,
                issuer_path: issuer.path_pem.clone(),
            })
        }
        Err(Unissued::Hsm(error)) => {
            service.metrics.hsm_sign_latency.observe(started.elapsed());
            Err(hsm_unavailable(error))
        }
        Err(Unissued::Check(error)) => Err(internal(error)),
        Err(Unissued::Lost) => Err(internal(
            "the certificate's check or record ended without an answer",
        )),
        Err(Unissued::Record(hsm_took, error)) => {
            service.metrics.hsm_sign_latency.observe(hsm_took);
            Err(ApiError::unavailable(
                "ledger_unavailable",
                format!("the certificate was not issued: {error}"),
                Duration::from_secs(5),
            ))
        }
    }
}

/// The light-load path of [`sign_and_record`]: the check and the hand-off to the recorder
/// on the HSM session's thread, the answer awaited until the job's deadline unless the
/// session took the certificate for recording by then.
async fn on_the_session(
    service: &Service,
    issuer: &IssuerState,
    unsigned: Unsigned,
    announcement: Expected,
    started: Instant,
) -> Result<Result<Recorded, Unissued>, ApiError> {
    let tbs = unsigned.prepared.tbs_der().to_vec();
    let waiting = Waiting(Arc::new(Handover::new(announcement)));
    let (done, answer) = oneshot::channel();
    let then = unsigned.then_record(
        service.recorder.submitter(),
        waiting.0.clone(),
        started,
        done,
    );
    let deadline = service
        .pool
        .sign_then(&issuer.key, issuer.algorithm, tbs, then)
        .map_err(hsm_unavailable)?;
    let timed_out = || {
        Unissued::Hsm(HsmError::Timeout {
            after: service.pool.op_timeout(),
        })
    };
    tokio::pin!(answer);
    let answered = match tokio::time::timeout_at(deadline.into(), &mut answer).await {
        Ok(answered) => answered,
        // Not signed in time: the session will record nothing.
        Err(_) if waiting.0.give_up() => return Ok(Err(timed_out())),
        // Signed already and on its way to the ledger: it is issued, so wait for it.
        Err(_) => answer.await,
    };
    // No answer at all: the job expired in the queue unrun (the request can still give up),
    // or the step after the signature panicked.
    Ok(answered.unwrap_or_else(|_| {
        Err(if waiting.0.give_up() {
            timed_out()
        } else {
            Unissued::Lost
        })
    }))
}

/// The path of [`sign_and_record`] under load: the signature answered to this task (the HSM's
/// replies go out in batches), checked on a verify thread, handed to the recorder from here.
async fn step_by_step(
    service: &Service,
    issuer: &IssuerState,
    unsigned: Unsigned,
    announcement: Expected,
    started: Instant,
) -> Result<Result<Recorded, Unissued>, ApiError> {
    let tbs = unsigned.prepared.tbs_der().to_vec();
    let signature = match service.pool.sign(&issuer.key, issuer.algorithm, tbs).await {
        Ok(signature) => signature,
        // Nothing to check: no hand-off to a verify thread.
        Err(error) => return Ok(Err(Unissued::Hsm(error))),
    };
    let hsm_took = started.elapsed();
    let checked = service
        .verifier
        .run(false, move || unsigned.finish(Ok(signature), hsm_took))
        .await
        .map_err(internal)?;
    let (done, answer) = oneshot::channel();
    Issued::record(checked, &service.recorder.submitter(), announcement, done);
    Ok(answer.await.unwrap_or(Err(Unissued::Lost)))
}

/// The ledger row and the `sign.issued` record of the certificate `template` describes,
/// without the signed certificate and its hash.
fn describe(
    template: &Template,
    issuer: &IssuerState,
    identity: &str,
    client: &ClientPolicy,
    request: &Request<'_>,
    context: &RequestContext,
    serial_hex: &str,
) -> (IssuedCertificate, AuditEvent) {
    // `finish` checks that the signed certificate carries exactly the template's TBS, so
    // its fields are the template's.
    let validity = template.validity();
    let sans = template.sans();
    let row = IssuedCertificate {
        serial: serial_hex.to_owned(),
        issuer_key_id: hex::encode(&issuer.view.key_identifier),
        subject: template.subject().to_string(),
        sans: sans.clone(),
        profile: request.profile.to_owned(),
        client: identity.to_owned(),
        not_before: validity.not_before.to_unix_duration().as_secs() as i64,
        not_after: validity.not_after.to_unix_duration().as_secs() as i64,
        der: Vec::new(),
    };
    let event = AuditEvent {
        event: "sign.issued".into(),
        actor: identity.to_owned(),
        details: json!({
            "client": client.name,
            "profile": request.profile,
            "issuer": issuer.name,
            "serial": serial_hex,
            "subject": row.subject,
            "sans": sans,
            "not_before": validity.not_before.to_string(),
            "not_after": validity.not_after.to_string(),
            "csr_sha256": context.csr_sha256,
        }),
    };
    (row, event)
}

/// A certificate on its way to the HSM, with what will be recorded of it once signed.
struct Unsigned {
    /// The TBS to sign and the check of its signature.
    prepared: pki::Prepared,
    /// The ledger row, without the certificate.
    row: IssuedCertificate,
    /// The `sign.issued` record, without the certificate's hash.
    event: AuditEvent,
}

impl Unsigned {
    /// What the HSM session's thread does with the signature at light load: unless the
    /// request gave up (`handover`), [`Unsigned::finish`] and [`Issued::record`] there.
    /// `started` is when the signature was asked for.
    fn then_record(
        self,
        recorder: Submitter,
        handover: Arc<Handover>,
        started: Instant,
        done: oneshot::Sender<Result<Recorded, Unissued>>,
    ) -> Then {
        Box::new(move |signature| {
            let Some(announcement) = handover.take_for_recording() else {
                // The request gave up waiting: this certificate is never issued.
                return;
            };
            Issued::record(
                self.finish(signature, started.elapsed()),
                &recorder,
                announcement,
                done,
            );
        })
    }

    /// Checks the signed certificate against its TBS and the issuer's key, and completes its
    /// row and record with it. `hsm_took` is how long the signature took.
    fn finish(
        self,
        signature: Result<Vec<u8>, HsmError>,
        hsm_took: Duration,
    ) -> Result<Issued, Unissued> {
        let Unsigned {
            prepared,
            mut row,
            mut event,
        } = self;
        let der = prepared
            .finish(&signature.map_err(Unissued::Hsm)?)
            .map_err(Unissued::Check)?;
        event.details["certificate_sha256"] = json!(crate::digest::sha256_hex(&der));
        row.der = der.clone();
        Ok(Issued {
            der,
            row,
            event,
            hsm_took,
        })
    }
}

/// A certificate signed and checked, with its ledger row and audit record.
struct Issued {
    der: Vec<u8>,
    row: IssuedCertificate,
    event: AuditEvent,
    hsm_took: Duration,
}

impl Issued {
    /// Hands a `checked` certificate to the `recorder`, whose answer goes to `done` once its
    /// row and record are durable; a certificate that failed goes to `done` at once. The
    /// recorder's `announcement` of it is withdrawn either way.
    fn record(
        checked: Result<Issued, Unissued>,
        recorder: &Submitter,
        announcement: Expected,
        done: oneshot::Sender<Result<Recorded, Unissued>>,
    ) {
        let Issued {
            der,
            row,
            event,
            hsm_took,
        } = match checked {
            Ok(issued) => issued,
            Err(unissued) => {
                let _ = done.send(Err(unissued));
                return;
            }
        };
        let record_started = Instant::now();
        drop(announcement);
        recorder.submit(
            Some(Change::Issued(row)),
            event,
            Box::new(move |recorded| {
                let _ = done.send(match recorded {
                    Ok(_) => Ok(Recorded {
                        der,
                        hsm_took,
                        record_took: record_started.elapsed(),
                    }),
                    Err(error) => Err(Unissued::Record(hsm_took, error)),
                });
            }),
        );
    }
}

/// The request's hold on its [`Handover`]: a request that goes away before its answer (the
/// client disconnected) gives up on the certificate, as one that timed out does.
struct Waiting(Arc<Handover>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.give_up();
    }
}

/// Who gives up on a certificate whose signature is late: the request, at the HSM's
/// operation timeout, or no one, once the HSM session's thread took it for recording. The
/// one who comes first decides, so a certificate is recorded only if its request still
/// waits for it. It holds the recorder's announcement of the certificate, so a request that
/// gives up withdraws it at once, even while the HSM call it waited for never returns (the
/// recorder would otherwise wait for that entry at every group).
struct Handover {
    state: AtomicU8,
    announcement: Mutex<Option<Expected>>,
}

impl Handover {
    const SIGNING: u8 = 0;
    const RECORDING: u8 = 1;
    const ABANDONED: u8 = 2;

    fn new(announcement: Expected) -> Self {
        Handover {
            state: AtomicU8::new(Self::SIGNING),
            announcement: Mutex::new(Some(announcement)),
        }
    }

    fn announcement(&self) -> Option<Expected> {
        self.announcement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// On the session's thread, with the signature: the announcement, to be withdrawn when
    /// the certificate is handed to the recorder, if the request still waits.
    fn take_for_recording(&self) -> Option<Expected> {
        self.state
            .compare_exchange(
                Self::SIGNING,
                Self::RECORDING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()?;
        self.announcement()
    }

    /// In the request, at the timeout: true if the certificate will not be recorded (asked
    /// again, the same answer); the announcement is withdrawn then.
    fn give_up(&self) -> bool {
        match self.state.compare_exchange(
            Self::SIGNING,
            Self::ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                drop(self.announcement());
                true
            }
            Err(now) => now == Self::ABANDONED,
        }
    }
}

/// A certificate signed, checked and recorded.
struct Recorded {
    /// The signed certificate.
    der: Vec<u8>,
    /// From queueing the signature to having it.
    hsm_took: Duration,
    /// From handing the entry to the recorder to its being durable.
    record_took: Duration,
}

/// Why a certificate was not issued after it went to the HSM.
enum Unissued {
    /// The HSM did not sign.
    Hsm(HsmError),
    /// The signed certificate failed its check.
    Check(pki::PkiError),
    /// The ledger did not record it (the HSM's part took the duration).
    Record(Duration, RecordError),
    /// The work after the signature ended without an answer (it panicked).
    Lost,
}

/// Counts the outcome, and audits it when it is a refusal or failure (issuances were
/// audited with their ledger row). If even the audit record cannot be written the answer
/// becomes a 503: nothing goes unrecorded silently.
pub(crate) async fn conclude(
    service: &Service,
    settings: &Settings,
    context: &RequestContext,
    result: Result<Signed, ApiError>,
    started: Instant,
) -> Result<Signed, ApiError> {
    // Only configured profile names become metric labels; the rest of the request is
    // untrusted text.
    let profile_label = if settings.profiles.contains_key(&context.profile) {
        context.profile.as_str()
    } else {
        "(none)"
    };
    let result = match result {
        Ok(signed) => {
            service
                .metrics
                .count_request(profile_label, Outcome::Issued);
            Ok(signed)
        }
        Err(error) => {
            service
                .metrics
                .count_request(profile_label, Outcome::of_failure(&error));
            Err(audit_refusal(service, context, error).await)
        }
    };
    service.metrics.request_latency.observe(started.elapsed());
    result
}

/// Audits a refusal or failure; returns the error to answer with.
async fn audit_refusal(service: &Service, context: &RequestContext, error: ApiError) -> ApiError {
    let request = json!({
        "profile": context.profile,
        "csr_sha256": context.csr_sha256,
    });
    audit_refused(service, &context.identity, "sign", request, error).await
}

/// Logs and audits a refused or failed request of `action` (`sign`, `jwt`) as
/// `<action>.refused` (the client's doing) or `<action>.failed`, with the particulars of the
/// `request` (a JSON object) and the answer's status, code and message; returns the error to
/// answer with, or the 503 of an audit log that cannot be written.
pub(crate) async fn audit_refused(
    service: &Service,
    actor: &str,
    action: &str,
    request: serde_json::Value,
    error: ApiError,
) -> ApiError {
    tracing::info!(
        client = %actor,
        action,
        status = error.status.as_u16(),
        code = error.code,
        message = %error.message,
        "request refused"
    );
    let outcome = if error.is_refusal() {
        "refused"
    } else {
        "failed"
    };
    let mut details = request;
    details["status"] = json!(error.status.as_u16());
    details["code"] = json!(error.code);
    details["message"] = json!(error.message);
    match service
        .audit(&format!("{action}.{outcome}"), actor, details)
        .await
    {
        Ok(()) => error,
        Err(audit_error) => audit_error,
    }
}

/// A policy denial as a 403.
pub(crate) fn policy_denied(denial: crate::policy::Denial) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "policy_denied", denial.to_string())
}

/// An HSM failure as the 503 a client can retry.
pub(crate) fn hsm_unavailable(error: HsmError) -> ApiError {
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

/// A failure inside hsmca (never the client's doing) as a 500, logged.
pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "signing failed inside hsmca");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the certificate could not be made: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::recorder::fresh_recorder;

    #[test]
    fn the_first_to_decide_wins_and_a_request_that_gives_up_withdraws_the_announcement() {
        let (_dir, recorder) = fresh_recorder();

        // The request gives up first: the announcement goes with it, and the session's
        // thread, when the signature comes, records nothing.
        let handover = Handover::new(recorder.expect());
        assert_eq!(recorder.announced(), 1);
        assert!(handover.give_up());
        assert_eq!(recorder.announced(), 0);
        assert!(handover.give_up(), "asked again, the same answer");
        assert!(handover.take_for_recording().is_none());

        // The session's thread comes first: the request may no longer give up, and the
        // announcement stands until the session hands the certificate over.
        let handover = Handover::new(recorder.expect());
        let announcement = handover.take_for_recording().unwrap();
        assert!(!handover.give_up());
        assert_eq!(recorder.announced(), 1);
        drop(announcement);
        assert_eq!(recorder.announced(), 0);
    }
}
