//! Whether the store's certificates and their `sign.issued` audit records match one to one,
//! as they must: a certificate row and its record are committed in one transaction. A row
//! without its record is a certificate the audit chain does not account for; a record
//! without its row, a certificate the ledger lost (and that CRLs and lookups cannot find).

use std::collections::HashSet;

/// What [`reconcile`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Certificate rows in the store.
    pub certificates: u64,
    /// `sign.issued` records in the chain.
    pub records: u64,
    /// Serials of rows with no `sign.issued` record.
    pub rows_without_record: Vec<String>,
    /// Serials of `sign.issued` records with no row (a record without a serial is listed as
    /// its sequence number, `seq N`).
    pub records_without_row: Vec<String>,
}

impl Reconciliation {
    /// Whether rows and records match one to one.
    pub fn is_clean(&self) -> bool {
        self.rows_without_record.is_empty() && self.records_without_row.is_empty()
    }

    /// One line for an operator: the counts, and the first serials of each mismatch.
    pub fn summary(&self) -> String {
        if self.is_clean() {
            return format!(
                "{} certificates and {} sign.issued records, one to one",
                self.certificates, self.records
            );
        }
        let first = |serials: &[String]| {
            let shown: Vec<&str> = serials.iter().take(5).map(String::as_str).collect();
            let more = serials.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        let mut parts = Vec::new();
        if !self.rows_without_record.is_empty() {
            parts.push(format!(
                "{} certificates without a sign.issued record ({})",
                self.rows_without_record.len(),
                first(&self.rows_without_record)
            ));
        }
        if !self.records_without_row.is_empty() {
            parts.push(format!(
                "{} sign.issued records without a certificate row ({})",
                self.records_without_row.len(),
                first(&self.records_without_row)
            ));
        }
        format!(
            "{} certificates and {} sign.issued records do not match: {}",
            self.certificates,
            self.records,
            parts.join("; ")
        )
    }
}

/// How many of the chain's newest records the check at start reads.
pub const RECENT_RECORDS: u64 = 1000;

/// A `sign.issued` record's serial (or `seq N` without one); `None` for any other record.
fn sign_issued(seq: u64, line: &str) -> Option<String> {
    // Only a record naming its event `sign.issued` is parsed in full.
    if !line.contains("\"event\":\"sign.issued\"") {
        return None;
    }
    let record = serde_json::from_str::<serde_json::Value>(line).ok()?;
    if record["event"] != "sign.issued" {
        return None;
    }
    Some(
        record["details"]["serial"]
            .as_str()
            .map_or_else(|| format!("seq {seq}"), str::to_owned),
    )
}

/// A record's `time`, in Unix seconds.
fn record_time(record: &serde_json::Value) -> Option<i64> {
    let time: der::DateTime = record["time"].as_str()?.parse().ok()?;
    Some(time.unix_duration().as_secs() as i64)
}

/// Matches `rows` with `records`, both serials.
fn matched(rows: HashSet<String>, records: impl IntoIterator<Item = String>) -> Reconciliation {
    let mut rows = rows;
    let mut found = Reconciliation {
        certificates: rows.len() as u64,
        ..Reconciliation::default()
    };
    for serial in records {
        found.records += 1;
        if !rows.remove(&serial) {
            found.records_without_row.push(serial);
        }
    }
    let mut rows: Vec<String> = rows.into_iter().collect();
    rows.sort();
    found.rows_without_record = rows;
    found
}

/// Matches the store's certificate `serials` with the `sign.issued` records among `records`
/// (audit records, one JSON line each, of a verified chain).
pub fn reconcile<'a>(
    serials: impl IntoIterator<Item = String>,
    records: impl IntoIterator<Item = &'a str>,
) -> Reconciliation {
    let records = (1..)
        .zip(records)
        .filter_map(|(seq, line)| sign_issued(seq, line));
    matched(serials.into_iter().collect(), records)
}

/// The check a service runs at start: the `sign.issued` records among `records`, the
/// chain's newest (at most [`RECENT_RECORDS`], oldest first, the first numbered
/// `first_seq`), matched with the certificates issued since the oldest of them. `rows` are
/// the serials and issue times (Unix seconds) of the certificates issued at or after a second
/// before [`window_start`] of `records`.
///
/// A row's issue time and its record's time are taken in one transaction, a second apart at
/// most, the row's first: every record of the window has its row among `rows`, and a row
/// issued more than a second after the window opens has its record in the window.
pub fn reconcile_recent(
    rows: impl IntoIterator<Item = (String, i64)>,
    records: &[String],
    first_seq: u64,
) -> Reconciliation {
    let start = window_start(records);
    let rows: Vec<(String, i64)> = rows.into_iter().collect();
    let records = (first_seq..)
        .zip(records)
        .filter_map(|(seq, line)| sign_issued(seq, line));
    let mut found = matched(
        rows.iter().map(|(serial, _)| serial.clone()).collect(),
        records,
    );
    // A row from the window's first second may have its record just before the window.
    let issued_at: std::collections::HashMap<&str, i64> = rows
        .iter()
        .map(|(serial, at)| (serial.as_str(), *at))
        .collect();
    found
        .rows_without_record
        .retain(|serial| issued_at[serial.as_str()] > start.saturating_add(1));
    found.certificates = rows
        .iter()
        .filter(|(_, at)| *at > start.saturating_add(1))
        .count() as u64;
    found
}

/// Says what the check at start found: info when rows and records match, a warning naming
/// the serials when not (issuance goes on: the operator looks, with `hsmca audit verify`).
pub fn report_recent(found: &Reconciliation) {
    if found.is_clean() {
        tracing::info!(
            certificates = found.certificates,
            records = found.records,
            "the newest certificates and their sign.issued records match one to one"
        );
    } else {
        tracing::warn!(
            "the newest certificates and the audit chain disagree: {}; `hsmca audit verify --config` checks them all",
            found.summary()
        );
    }
}

/// The time (Unix seconds) of the oldest of `records`: the certificates issued from then on
/// are those [`reconcile_recent`] checks. With no records, every certificate is.
pub fn window_start(records: &[String]) -> i64 {
    records
        .first()
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|record| record_time(&record))
        .unwrap_or(i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::chain::{AuditChain, AuditEvent, GENESIS_HASH};

    fn chain(events: &[(&str, serde_json::Value)]) -> Vec<String> {
        let events: Vec<AuditEvent> = events
            .iter()
            .map(|(event, details)| AuditEvent {
                event: (*event).into(),
                actor: "c".into(),
                details: details.clone(),
            })
            .collect();
        AuditChain::after(0, GENESIS_HASH.into())
            .link("2026-12-02T00:00:00Z", &events)
            .lines
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn rows_and_records_are_matched_by_serial() {
        let records = chain(&[
            ("ceremony.root", serde_json::json!({})),
            ("sign.issued", serde_json::json!({ "serial": "01" })),
            (
                "sign.issued.unrecorded",
                serde_json::json!({ "serial": "02" }),
            ),
            ("sign.issued", serde_json::json!({ "serial": "03" })),
            ("sign.issued", serde_json::json!({})),
        ]);
        let found = reconcile(
            ["01", "04"].map(String::from),
            records.iter().map(String::as_str),
        );
        assert_eq!(found.certificates, 2);
        assert_eq!(found.records, 3);
        assert_eq!(found.rows_without_record, ["04"]);
        assert_eq!(found.records_without_row, ["03", "seq 5"]);
        assert!(!found.is_clean());
        assert_eq!(
            found.summary(),
            "2 certificates and 3 sign.issued records do not match: 1 certificates without a sign.issued record (04); 2 sign.issued records without a certificate row (03, seq 5)"
        );
        let clean = reconcile(["01".into()], records[..2].iter().map(String::as_str));
        assert!(clean.is_clean());
        assert_eq!(
            clean.summary(),
            "1 certificates and 1 sign.issued records, one to one"
        );
    }

    #[test]
    fn the_recent_check_looks_only_inside_the_window_of_the_newest_records() {
        let at = |second: u32| format!("2026-12-02T00:00:{second:02}Z");
        let events: Vec<AuditEvent> = ["a", "b", "c"]
            .iter()
            .map(|serial| AuditEvent {
                event: "sign.issued".into(),
                actor: "c".into(),
                details: serde_json::json!({ "serial": serial }),
            })
            .collect();
        // Three records: "a" opens the window at second 10, "b" at 12, "c" at 20.
        let mut chain = AuditChain::after(0, GENESIS_HASH.into());
        let mut records = Vec::new();
        for (event, second) in events.iter().zip([10, 12, 20]) {
            let linked = chain.link(&at(second), std::slice::from_ref(event));
            records.push(linked.lines.trim_end().to_owned());
            chain = linked.next;
        }
        let base = window_start(&records);
        assert_eq!(base, 1_796_169_610);
        // "a" to "c" are matched; "early", issued in the window's first second, may have its
        // record before the window and is not named; "x", issued later, has no record.
        let rows = [
            ("a", base),
            ("early", base + 1),
            ("b", base + 2),
            ("c", base + 10),
            ("x", base + 11),
        ]
        .map(|(serial, at)| (serial.to_owned(), at));
        let found = reconcile_recent(rows.clone(), &records, 1);
        assert_eq!(found.rows_without_record, ["x"]);
        assert!(found.records_without_row.is_empty(), "{found:?}");
        // Without the rows of "a" and "c", their records are named, wherever in the window.
        let found = reconcile_recent([rows[1].clone(), rows[2].clone()], &records, 1);
        assert_eq!(found.records_without_row, ["a", "c"]);
    }
}
