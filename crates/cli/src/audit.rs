//! `warren audit tail|export|verify`: the hash-chained audit log in the state directory's
//! store (read directly: it works with or without a daemon, and needs no API).

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use warren_store::audit::AuditRecord;

/// `warren audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// The latest records (and, with -f, new ones as they are written).
    Tail {
        /// How many of the latest records to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
        /// Only this task's records.
        #[arg(long, value_name = "ID")]
        task: Option<String>,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Every record as JSON lines (with its hash and the previous one's).
    Export {
        /// Only this task's records.
        #[arg(long, value_name = "ID")]
        task: Option<String>,
    },
    /// Recompute the hash chain: exit 0 when intact, 1 naming each break.
    Verify {
        /// Also require the chain to end at this head hash (kept elsewhere: detects a
        /// truncated or rewritten tail).
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn as_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "at_ms": r.at_ms,
        "task": r.task,
        "kind": r.kind,
        "data": serde_json::from_str::<Value>(&r.data).unwrap_or(Value::String(r.data.clone())),
        "prev": r.prev,
        "hash": r.hash,
    })
}

fn human(r: &AuditRecord) -> String {
    let d: Value = serde_json::from_str(&r.data).unwrap_or_default();
    let secs = r.at_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let what = match r.kind.as_str() {
        "tool.call" => format!(
            "{} {} {} [{}] {:.1} ms{}",
            d["tool"].as_str().unwrap_or_default(),
            d["decision"].as_str().unwrap_or_default(),
            d["arguments"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect::<String>(),
            d["capability"]
                .as_str()
                .or(d["reason"].as_str())
                .unwrap_or_default(),
            d["duration_ms"].as_f64().unwrap_or(0.0),
            if d["is_error"].as_bool() == Some(true) {
                " error"
            } else {
                ""
            }
        ),
        "model.call" => format!(
            "{} {} in / {} out, {:.0} ms",
            d["model"].as_str().unwrap_or_default(),
            d["input_tokens"],
            d["output_tokens"],
            d["latency_ms"].as_f64().unwrap_or(0.0)
        ),
        _ => r.data.chars().take(160).collect(),
    };
    format!(
        "{:>6} {h:02}:{m:02}:{s:02} {:<14} {:<16} {what}",
        r.seq,
        r.task.as_deref().unwrap_or("-"),
        r.kind
    )
}

/// Run an audit subcommand on the store at `store` (default: the state directory's SQLite file).
pub fn run(cmd: AuditCommand, state: &Path, store: Option<&str>) -> i32 {
    let location = match store {
        Some(s) => warren_store::Location::parse(s),
        None => {
            let db = state.join("warren.db");
            if !db.exists() {
                eprintln!("warren: no store at {} (nothing audited yet)", db.display());
                return 1;
            }
            warren_store::Location::Sqlite(db)
        }
    };
    let store = match warren_store::open(&location) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren: {}: {e}", location.display());
            return 1;
        }
    };
    let all = |task: Option<&str>, mut each: Box<dyn FnMut(&AuditRecord) + '_>| {
        let mut after = 0;
        loop {
            let batch = store.audit_records(after, task, 5000)?;
            let Some(last) = batch.last() else {
                return Ok::<u64, warren_store::StoreError>(after);
            };
            after = last.seq;
            for r in &batch {
                each(r);
            }
        }
    };
    match cmd {
        AuditCommand::Export { task } => {
            match all(task.as_deref(), Box::new(|r| println!("{}", as_json(r)))) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("warren: {e}");
                    1
                }
            }
        }
        AuditCommand::Tail {
            lines,
            follow,
            task,
            json,
        } => {
            let show = |r: &AuditRecord| {
                if json {
                    println!("{}", as_json(r));
                } else {
                    println!("{}", human(r));
                }
            };
            let mut last: std::collections::VecDeque<AuditRecord> = Default::default();
            let after = match all(
                task.as_deref(),
                Box::new(|r| {
                    last.push_back(r.clone());
                    if last.len() > lines {
                        last.pop_front();
                    }
                }),
            ) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("warren: {e}");
                    return 1;
                }
            };
            last.iter().for_each(show);
            let mut after = after;
            if !follow {
                return 0;
            }
            loop {
                std::thread::sleep(Duration::from_millis(300));
                match store.audit_records(after, task.as_deref(), 1000) {
                    Ok(batch) => {
                        for r in &batch {
                            show(r);
                            after = r.seq;
                        }
                    }
                    Err(e) => {
                        eprintln!("warren: {e}");
                        return 1;
                    }
                }
            }
        }
        AuditCommand::Verify { expect_head, json } => {
            let report = match store.audit_verify() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warren: {e}");
                    return 1;
                }
            };
            let head_ok = expect_head.as_ref().is_none_or(|h| *h == report.head);
            let ok = report.problems.is_empty() && head_ok;
            if json {
                println!(
                    "{}",
                    json!({"intact": ok, "records": report.records, "head": report.head,
                           "head_matches": expect_head.as_ref().map(|_| head_ok),
                           "problems": report.problems})
                );
            } else {
                for p in &report.problems {
                    println!("record {}: {}", p.seq, p.what);
                }
                if !head_ok {
                    println!(
                        "the chain ends at {} but {} was expected: records were removed or rewritten at the end",
                        report.head,
                        expect_head.unwrap_or_default()
                    );
                }
                println!(
                    "{} records, head {}: {}",
                    report.records,
                    report.head,
                    if ok { "intact" } else { "TAMPERED" }
                );
            }
            i32::from(!ok)
        }
    }
}
