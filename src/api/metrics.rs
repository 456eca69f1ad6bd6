//! Prometheus metrics in the text exposition format, kept in atomics and one small map: the
//! service's own counters and histograms, plus gauges read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A certificate was issued.
    Issued,
    /// Refused: bad input or policy.
    Refused,
    /// The service could not serve it (HSM busy or down, ledger failure).
    Unavailable,
}

impl Outcome {
    /// How a request that failed with `error` ended: refused (a 4xx) or unavailable (a 5xx).
    pub fn of_failure(error: &super::error::ApiError) -> Self {
        if error.is_refusal() {
            Outcome::Refused
        } else {
            Outcome::Unavailable
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Refused => "refused",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, Outcome), u64>>,
    /// Time from a signing request's arrival to its answer.
    pub request_latency: Histogram,
    /// Time the HSM pool took to sign, queueing included.
    pub hsm_sign_latency: Histogram,
    /// Time to make the ledger row and audit record durable.
    pub record_latency: Histogram,
    tls_refusals: AtomicU64,
    jwt_requests: Mutex<BTreeMap<Outcome, u64>>,
}

/// Gauges read from the other layers when scraped.
pub struct Gauges {
    /// HSM sessions signing now.
    pub pool_busy: usize,
    /// Jobs waiting for an HSM session.
    pub queue_depth: usize,
    /// HSM sessions in the pool.
    pub pool_sessions: usize,
    /// Abandoned HSM sessions whose PKCS#11 call has not returned.
    pub pool_stuck: usize,
    /// Sessions reopened after HSM faults since start.
    pub session_resets: u64,
    /// 1 when the HSM is healthy.
    pub hsm_up: bool,
    /// Ledger and audit groups written, and entries in them.
    pub record_groups: u64,
    /// Entries written.
    pub record_entries: u64,
    /// Each issuer's notAfter, seconds since the epoch.
    pub issuer_not_after: Vec<(String, u64)>,
    /// The issuers inside the expiry warning margin.
    pub issuer_expiring: Vec<String>,
    /// Per client identity, its issued CA certificates still valid; `None` when the ledger
    /// could not be read.
    pub client_cas: Option<BTreeMap<String, ClientCas>>,
    /// The audit checkpoint counters (zero when checkpoints are off).
    pub checkpoints: CheckpointGauges,
}

/// The audit checkpoint counters at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointGauges {
    /// Checkpoints signed since start.
    pub signed: u64,
    /// Checkpoints that could not be signed or recorded since start.
    pub failed: u64,
    /// Witness writes that failed since start.
    pub witness_failures: u64,
    /// When the newest checkpoint was signed, Unix seconds (0: none since start).
    pub last_signed: u64,
}

/// A per-client CA gauge: its name, its help text, and its value.
type ClientCaGauge = (&'static str, &'static str, fn(&ClientCas) -> i64);

/// A client's CA certificates still valid and not revoked, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCas {
    /// How many are closer to expiry than `[trust] issuer_expiry_warning`.
    pub expiring: u64,
    /// The newest's notBefore and notAfter, Unix seconds.
    pub newest: (i64, i64),
}

impl Metrics {
    /// Counts a signing request for `profile` that ended with `outcome`.
    pub fn count_request(&self, profile: &str, outcome: Outcome) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((profile.to_owned(), outcome)).or_default() += 1;
    }

    /// Counts a JWT-SVID request that ended with `outcome`.
    pub fn count_jwt(&self, outcome: Outcome) {
        let mut requests = self.jwt_requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry(outcome).or_default() += 1;
    }

    /// Counts a TLS handshake refused for its client certificate.
    pub fn count_tls_refusal(&self) {
        self.tls_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP hsmca_sign_requests_total Signing requests by profile and outcome.\n# TYPE hsmca_sign_requests_total counter\n");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((profile, outcome), count) in &requests {
            let _ = writeln!(
                out,
                "hsmca_sign_requests_total{{profile=\"{}\",outcome=\"{}\"}} {count}",
                escape(profile),
                outcome.label()
            );
        }
        out.push_str("# HELP hsmca_certificates_issued_total Certificates issued, by profile.\n# TYPE hsmca_certificates_issued_total counter\n");
        for ((profile, outcome), count) in &requests {
            if *outcome == Outcome::Issued {
                let _ = writeln!(
                    out,
                    "hsmca_certificates_issued_total{{profile=\"{}\"}} {count}",
                    escape(profile)
                );
            }
        }
        out.push_str("# HELP hsmca_jwt_requests_total JWT-SVID requests by outcome.\n# TYPE hsmca_jwt_requests_total counter\n");
        let jwt_requests = self
            .jwt_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (outcome, count) in &jwt_requests {
            let _ = writeln!(
                out,
                "hsmca_jwt_requests_total{{outcome=\"{}\"}} {count}",
                outcome.label()
            );
        }
        for (name, help, histogram) in [
            (
                "hsmca_sign_request_duration_seconds",
                "Signing request latency, arrival to answer.",
                &self.request_latency,
            ),
            (
                "hsmca_hsm_sign_duration_seconds",
                "HSM signing latency, queueing included.",
                &self.hsm_sign_latency,
            ),
            (
                "hsmca_record_duration_seconds",
                "Time to make the ledger row and audit record durable.",
                &self.record_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.render(&mut out, name, "");
        }
        let tls = self.tls_refusals.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "hsmca_tls_client_refusals_total",
                "counter",
                "TLS handshakes refused for a missing or untrusted client certificate.",
                tls,
            ),
            (
                "hsmca_hsm_pool_busy",
                "gauge",
                "HSM sessions signing now.",
                gauges.pool_busy as u64,
            ),
            (
                "hsmca_hsm_pool_sessions",
                "gauge",
                "HSM sessions in the pool.",
                gauges.pool_sessions as u64,
            ),
            (
                "hsmca_hsm_pool_stuck_sessions",
                "gauge",
                "HSM sessions abandoned and replaced because a PKCS#11 call did not return, still waiting for it.",
                gauges.pool_stuck as u64,
            ),
            (
                "hsmca_hsm_queue_depth",
                "gauge",
                "Signing jobs waiting for an HSM session.",
                gauges.queue_depth as u64,
            ),
            (
                "hsmca_hsm_session_resets_total",
                "counter",
                "HSM sessions reopened after faults.",
                gauges.session_resets,
            ),
            (
                "hsmca_hsm_up",
                "gauge",
                "1 when the HSM answers normally.",
                u64::from(gauges.hsm_up),
            ),
            (
                "hsmca_record_groups_total",
                "counter",
                "Group commits of ledger rows and audit records.",
                gauges.record_groups,
            ),
            (
                "hsmca_record_entries_total",
                "counter",
                "Ledger and audit entries written.",
                gauges.record_entries,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out.push_str("# HELP hsmca_issuer_not_after_seconds Each issuer's notAfter, Unix time.\n# TYPE hsmca_issuer_not_after_seconds gauge\n");
        for (issuer, not_after) in &gauges.issuer_not_after {
            let _ = writeln!(
                out,
                "hsmca_issuer_not_after_seconds{{issuer=\"{}\"}} {not_after}",
                escape(issuer)
            );
        }
        out.push_str("# HELP hsmca_issuer_expiring 1 when an issuer is closer to expiry than [trust] issuer_expiry_warning.\n# TYPE hsmca_issuer_expiring gauge\n");
        for (issuer, _) in &gauges.issuer_not_after {
            let _ = writeln!(
                out,
                "hsmca_issuer_expiring{{issuer=\"{}\"}} {}",
                escape(issuer),
                u8::from(gauges.issuer_expiring.contains(issuer))
            );
        }
        let checkpoints = &gauges.checkpoints;
        out.push_str("# HELP hsmca_audit_checkpoints_total Audit checkpoints by result: signed (and recorded), or failed (an audit.checkpoint_failed gap).\n# TYPE hsmca_audit_checkpoints_total counter\n");
        let _ = writeln!(
            out,
            "hsmca_audit_checkpoints_total{{result=\"signed\"}} {}\nhsmca_audit_checkpoints_total{{result=\"failed\"}} {}",
            checkpoints.signed, checkpoints.failed
        );
        for (name, kind, help, value) in [
            (
                "hsmca_audit_witness_failures_total",
                "counter",
                "Audit checkpoints a witness (file or syslog) did not take.",
                checkpoints.witness_failures,
            ),
            (
                "hsmca_audit_checkpoint_last_signed_seconds",
                "gauge",
                "When the newest audit checkpoint was signed, Unix time (0: none since start).",
                checkpoints.last_signed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(cas) = &gauges.client_cas {
            let gauges: [ClientCaGauge; 3] = [
                (
                    "hsmca_client_ca_expiring",
                    "Per client, its CA certificates (issuing-ca profiles) still valid, not revoked, and closer to expiry than [trust] issuer_expiry_warning.",
                    |cas| cas.expiring as i64,
                ),
                (
                    "hsmca_client_ca_newest_not_before_seconds",
                    "Per client, the notBefore of its newest valid CA certificate, Unix time.",
                    |cas| cas.newest.0,
                ),
                (
                    "hsmca_client_ca_newest_not_after_seconds",
                    "Per client, the notAfter of its newest valid CA certificate, Unix time: a cluster CA that did not rotate nears it.",
                    |cas| cas.newest.1,
                ),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (client, client_cas) in cas {
                    let _ = writeln!(
                        out,
                        "{name}{{client=\"{}\"}} {}",
                        escape(client),
                        value(client_cas)
                    );
                }
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
