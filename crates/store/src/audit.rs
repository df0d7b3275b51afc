//! The audit log's hash chain: every record commits to the previous record's hash.
//!
//! `hash(n) = SHA-256(prev ‖ seq ‖ at_ms ‖ task ‖ kind ‖ data)` with every field length-prefixed
//! (so no two different records encode alike), `prev` being record `n-1`'s hash and the first
//! record's `prev` [`GENESIS`]. Sequence numbers start at 1 with no gaps.
//!
//! [`verify`] recomputes the chain: a modified record breaks its own hash, a deleted or
//! inserted one breaks the sequence or the next record's `prev`, reordered records break
//! `prev`. What a chain cannot show on its own: a truncated tail, or a suffix rewritten
//! wholesale by someone who recomputes the hashes. For those, compare the head hash that
//! `verify` reports with a copy kept elsewhere (`warren audit verify --expect-head`).
//! The store also refuses `UPDATE` and `DELETE` on the table (triggers), so only someone
//! editing the database file directly can change it — which is what `verify` is for.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The task it concerns, if any.
    pub task: Option<String>,
    /// What happened: `task.submitted`, `model.call`, `tool.call`, `policy.decision`, …
    pub kind: String,
    /// The record's data as stored (canonical JSON text: what the hash covers).
    pub data: String,
    /// The previous record's hash.
    pub prev: String,
    /// This record's hash.
    pub hash: String,
}

/// The hash of a record with these fields.
pub fn chain_hash(
    prev: &str,
    seq: u64,
    at_ms: i64,
    task: Option<&str>,
    kind: &str,
    data: &str,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(prev.as_bytes());
    field(&seq.to_le_bytes());
    field(&at_ms.to_le_bytes());
    match task {
        Some(t) => {
            field(b"1");
            field(t.as_bytes());
        }
        None => field(b"0"),
    }
    field(kind.as_bytes());
    field(data.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One break in the chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// The record where it shows.
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// The last record's hash (what to compare with an external copy).
    pub head: String,
    /// Breaks found, in order (empty: the chain is intact).
    pub problems: Vec<Problem>,
}

/// Checks records in storage order, one at a time (so a long log needs no memory).
pub struct Verifier {
    report: Report,
    prev: String,
    expect_seq: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            report: Report {
                head: GENESIS.into(),
                ..Report::default()
            },
            prev: GENESIS.into(),
            expect_seq: 1,
        }
    }
}

impl Verifier {
    /// Check the next record.
    pub fn push(&mut self, r: &AuditRecord) {
        let mut problem = |what: String| {
            self.report.problems.push(Problem { seq: r.seq, what });
        };
        if r.seq != self.expect_seq {
            problem(format!(
                "sequence {} where {} was expected (records deleted, inserted or reordered)",
                r.seq, self.expect_seq
            ));
        }
        if r.prev != self.prev {
            problem("does not follow the record before it (its prev hash differs): records deleted, inserted or reordered before it".into());
        }
        let h = chain_hash(&r.prev, r.seq, r.at_ms, r.task.as_deref(), &r.kind, &r.data);
        if h != r.hash {
            problem("its content does not match its hash: the record was modified".into());
        }
        self.report.records += 1;
        // Continue from what is stored, so one modified record is reported once, not as a
        // cascade over every later record.
        self.prev = r.hash.clone();
        self.report.head = r.hash.clone();
        self.expect_seq = r.seq + 1;
    }

    /// The result.
    pub fn finish(self) -> Report {
        self.report
    }
}

/// Verify records given in storage (sequence) order.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Report {
    let mut v = Verifier::default();
    for r in records {
        v.push(r);
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let data = format!("{{\"n\":{seq}}}");
                let hash = chain_hash(&prev, seq, 1000 + seq as i64, Some("t"), "k", &data);
                let r = AuditRecord {
                    seq,
                    at_ms: 1000 + seq as i64,
                    task: Some("t".into()),
                    kind: "k".into(),
                    data,
                    prev: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let c = chain(5);
        let r = verify(&c);
        assert!(r.problems.is_empty(), "{r:?}");
        assert_eq!((r.records, r.head.as_str()), (5, c[4].hash.as_str()));
    }

    #[test]
    fn modification_deletion_insertion_and_reordering_are_each_detected() {
        let mut m = chain(5);
        m[2].data = "{\"n\":99}".into();
        assert_eq!(verify(&m).problems.len(), 1, "modified: one problem");
        assert_eq!(verify(&m).problems[0].seq, 3);

        let mut d = chain(5);
        d.remove(2);
        assert!(!verify(&d).problems.is_empty(), "deleted");

        let mut i = chain(5);
        let extra = i[1].clone();
        i.insert(2, extra);
        assert!(!verify(&i).problems.is_empty(), "inserted");

        let mut o = chain(5);
        o.swap(1, 3);
        assert!(!verify(&o).problems.is_empty(), "reordered");

        // Field boundaries matter: moving bytes between fields changes the hash.
        assert_ne!(
            chain_hash(GENESIS, 1, 1, Some("ab"), "c", "d"),
            chain_hash(GENESIS, 1, 1, Some("a"), "bc", "d")
        );
        assert_ne!(
            chain_hash(GENESIS, 1, 1, None, "k", "d"),
            chain_hash(GENESIS, 1, 1, Some(""), "k", "d")
        );
    }
}
