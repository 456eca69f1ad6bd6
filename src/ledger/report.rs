//! What an auditor asks of a period, counted from the audit chain: certificates issued per
//! client, profile and issuer; refusals per event and code; revocations per reason; CRLs
//! published per issuer; Vault logins per client; ceremonies. `hsmca report` verifies the
//! chain first and says at the top of the report whether it holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::checkpoint::{CHECKPOINT_EVENT, CHECKPOINT_FAILED_EVENT, WITNESS_FAILED_EVENT};

/// The counts of one period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The period's start (RFC 3339, inclusive).
    pub since: String,
    /// The period's end (RFC 3339, exclusive).
    pub until: String,
    /// What the verification of the whole chain found: `intact, N records`, or what broke.
    pub chain: String,
    /// Records in the period.
    pub records: u64,
    /// `sign.issued` per `client / profile / issuer`.
    pub issued: BTreeMap<String, u64>,
    /// Refusals and failures (`sign.refused`, `sign.failed`, `revoke.refused`, …) per
    /// `event / code`.
    pub refused: BTreeMap<String, u64>,
    /// Revocations per reason.
    pub revocations: BTreeMap<String, u64>,
    /// CRLs published per issuer.
    pub crls: BTreeMap<String, u64>,
    /// Vault logins per client.
    pub vault_logins: BTreeMap<String, u64>,
    /// Ceremony records per event (`ceremony.root`, `ceremony.intermediate.failed`, …).
    pub ceremonies: BTreeMap<String, u64>,
    /// Checkpoint records per event (`audit.checkpoint`, `audit.checkpoint_failed`,
    /// `audit.witness_failed`).
    pub checkpoints: BTreeMap<String, u64>,
    /// What the check of the whole chain's checkpoints found, when the checkpoint key was
    /// given.
    pub checkpoint_check: Option<String>,
}

/// The output formats of `hsmca report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A Markdown document, one table per kind of record.
    Md,
    /// `kind,key,count` lines.
    Csv,
    /// One JSON object.
    Json,
}

/// The start of the day `date` (`YYYY-MM-DD`), or `date` itself if it is a full RFC 3339
/// UTC time; `None` if it is neither.
pub fn period_bound(date: &str) -> Option<String> {
    let full = if date.len() == 10 {
        format!("{date}T00:00:00Z")
    } else {
        date.to_owned()
    };
    full.parse::<der::DateTime>()
        .ok()
        .map(|time| time.to_string())
}

impl Report {
    /// Counts the records among `records` (audit records, one JSON line each, in chain order)
    /// whose time is in `[since, until)`, both RFC 3339 UTC; `chain` says whether the chain
    /// verified.
    pub fn build<'a>(
        records: impl IntoIterator<Item = &'a str>,
        since: &str,
        until: &str,
        chain: String,
    ) -> Self {
        let mut report = Report {
            since: since.to_owned(),
            until: until.to_owned(),
            chain,
            ..Report::default()
        };
        for line in records {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let time = record["time"].as_str().unwrap_or_default();
            // The same format on both sides: text order is time order.
            if time < since || time >= until {
                continue;
            }
            report.records += 1;
            let event = record["event"].as_str().unwrap_or_default();
            let details = &record["details"];
            let text = |field: &str| details[field].as_str().unwrap_or("?").to_owned();
            let count = |map: &mut BTreeMap<String, u64>, key: String| {
                *map.entry(key).or_default() += 1;
            };
            match event {
                "sign.issued" => count(
                    &mut report.issued,
                    format!(
                        "{} / {} / {}",
                        text("client"),
                        text("profile"),
                        text("issuer")
                    ),
                ),
                "revoke" => count(&mut report.revocations, text("reason")),
                "crl.published" => count(&mut report.crls, text("issuer")),
                "vault.login" => count(&mut report.vault_logins, text("client")),
                _ if event.starts_with("ceremony.") => {
                    count(&mut report.ceremonies, event.to_owned())
                }
                CHECKPOINT_EVENT | CHECKPOINT_FAILED_EVENT | WITNESS_FAILED_EVENT => {
                    count(&mut report.checkpoints, event.to_owned())
                }
                _ if event.ends_with(".refused")
                    || event.ends_with(".failed")
                    || event.ends_with(".unrecorded") =>
                {
                    count(&mut report.refused, format!("{event} / {}", text("code")))
                }
                _ => {}
            }
        }
        report
    }

    /// The tables of the report: a title and its counts each.
    fn tables(&self) -> [(&'static str, &BTreeMap<String, u64>); 7] {
        [
            ("issued (client / profile / issuer)", &self.issued),
            ("refused or failed (event / code)", &self.refused),
            ("revocations (reason)", &self.revocations),
            ("CRLs published (issuer)", &self.crls),
            ("Vault logins (client)", &self.vault_logins),
            ("ceremonies (event)", &self.ceremonies),
            ("audit checkpoints (event)", &self.checkpoints),
        ]
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        match format {
            Format::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(self).expect("a report serialises")
                );
            }
            Format::Csv => {
                let _ = writeln!(out, "kind,key,count");
                let _ = writeln!(
                    out,
                    "chain,\"{}\",{}",
                    self.chain.replace('"', "\"\""),
                    self.records
                );
                if let Some(check) = &self.checkpoint_check {
                    let _ = writeln!(out, "checkpoints,\"{}\",", check.replace('"', "\"\""));
                }
                for (title, counts) in self.tables() {
                    for (key, count) in counts {
                        let _ =
                            writeln!(out, "\"{title}\",\"{}\",{count}", key.replace('"', "\"\""));
                    }
                }
            }
            Format::Md => {
                let _ = writeln!(out, "# hsmca report, {} to {}\n", self.since, self.until);
                let _ = writeln!(out, "Audit chain: {}\n", self.chain);
                let _ = writeln!(
                    out,
                    "Checkpoints: {}\n",
                    self.checkpoint_check
                        .as_deref()
                        .unwrap_or("not checked (give --checkpoint-key and --witness)")
                );
                let _ = writeln!(out, "Records in the period: {}\n", self.records);
                for (title, counts) in self.tables() {
                    let _ = writeln!(out, "## {title}\n");
                    if counts.is_empty() {
                        let _ = writeln!(out, "none\n");
                        continue;
                    }
                    let _ = writeln!(out, "| | count |\n|---|---:|");
                    for (key, count) in counts {
                        let _ = writeln!(out, "| {key} | {count} |");
                    }
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::chain::{AuditChain, AuditEvent, GENESIS_HASH};

    #[test]
    fn the_period_counts_each_kind_of_record() {
        let event = |name: &str, details: serde_json::Value| AuditEvent {
            event: name.into(),
            actor: "a".into(),
            details,
        };
        let day = |time: &str, events: &[AuditEvent], chain: &AuditChain| chain.link(time, events);
        let first = day(
            "2026-11-30T23:59:59Z",
            &[event(
                "sign.issued",
                serde_json::json!({"client": "spire", "profile": "issuing-ca", "issuer": "p256"}),
            )],
            &AuditChain::after(0, GENESIS_HASH.into()),
        );
        let second = day(
            "2026-12-01T10:00:00Z",
            &[
                event(
                    "sign.issued",
                    serde_json::json!({"client": "spire", "profile": "issuing-ca", "issuer": "p256"}),
                ),
                event(
                    "sign.issued",
                    serde_json::json!({"client": "spire", "profile": "issuing-ca", "issuer": "p256"}),
                ),
                event("sign.refused", serde_json::json!({"code": "policy_denied"})),
                event("revoke", serde_json::json!({"reason": "superseded"})),
                event("crl.published", serde_json::json!({"issuer": "p256"})),
                event("vault.login", serde_json::json!({"client": "cert-manager"})),
                event("ceremony.root", serde_json::json!({})),
                event("audit.checkpoint", serde_json::json!({})),
                event("audit.checkpoint_failed", serde_json::json!({})),
                event("service.started", serde_json::json!({})),
            ],
            &first.next,
        );
        let lines = format!("{}{}", first.lines, second.lines);
        let since = period_bound("2026-12-01").unwrap();
        let until = period_bound("2026-12-02").unwrap();
        let report = Report::build(lines.lines(), &since, &until, "intact".into());
        assert_eq!(report.records, 10, "the day before is left out");
        assert_eq!(report.checkpoints["audit.checkpoint"], 1);
        assert_eq!(report.checkpoints["audit.checkpoint_failed"], 1);
        assert_eq!(report.issued["spire / issuing-ca / p256"], 2);
        assert_eq!(report.refused["sign.refused / policy_denied"], 1);
        assert_eq!(report.revocations["superseded"], 1);
        assert_eq!(report.crls["p256"], 1);
        assert_eq!(report.vault_logins["cert-manager"], 1);
        assert_eq!(report.ceremonies["ceremony.root"], 1);
        assert!(
            report
                .render(Format::Md)
                .contains("| spire / issuing-ca / p256 | 2 |")
        );
        assert!(
            report
                .render(Format::Csv)
                .contains("\"revocations (reason)\",\"superseded\",1")
        );
        let json: serde_json::Value = serde_json::from_str(&report.render(Format::Json)).unwrap();
        assert_eq!(json["issued"]["spire / issuing-ca / p256"], 2);
        assert_eq!(period_bound("yesterday"), None);
    }
}
