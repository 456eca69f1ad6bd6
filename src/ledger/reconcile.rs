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

/// Matches the store's certificate `serials` with the `sign.issued` records among `records`
/// (audit records, one JSON line each, of a verified chain).
pub fn reconcile<'a>(
    serials: impl IntoIterator<Item = String>,
    records: impl IntoIterator<Item = &'a str>,
) -> Reconciliation {
    let mut rows: HashSet<String> = serials.into_iter().collect();
    let mut found = Reconciliation {
        certificates: rows.len() as u64,
        ..Reconciliation::default()
    };
    for (seq, line) in (1..).zip(records) {
        // Only a record naming its event `sign.issued` is parsed in full.
        if !line.contains("\"event\":\"sign.issued\"") {
            continue;
        }
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if record["event"] != "sign.issued" {
            continue;
        }
        found.records += 1;
        match record["details"]["serial"].as_str() {
            Some(serial) if rows.remove(serial) => {}
            Some(serial) => found.records_without_row.push(serial.to_owned()),
            None => found.records_without_row.push(format!("seq {seq}")),
        }
    }
    let mut rows: Vec<String> = rows.into_iter().collect();
    rows.sort();
    found.rows_without_record = rows;
    found
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
}
