//! `GET /health` and `GET /metrics`: liveness, counts and the host's tiers, read through the
//! engine.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use warren_cell::check::HostTiers;
use warren_protocol::api::Health;

use super::{ApiResult, Shared};

static TIERS: OnceLock<HostTiers> = OnceLock::new();

/// The cell tiers this host can run and this build implements ([`HostTiers`]): probed once
/// (the first call; the daemon makes it at start, it forks a dozen probes), then the stored
/// answer.
pub fn host_tiers() -> &'static [String] {
    TIERS.get_or_init(HostTiers::detect).runnable()
}

/// Use `tiers` as this process's answer instead of probing (tests); false if an answer was
/// already stored.
pub fn set_host_tiers(tiers: HostTiers) -> bool {
    TIERS.set(tiers).is_ok()
}

/// Liveness and counts.
#[utoipa::path(get, path = "/health", tag = "daemon",
    responses((status = 200, body = Health, description = "the daemon runs; `status` is `stopping` during a shutdown")))]
pub(super) async fn health(State(d): Shared) -> ApiResult<axum::Json<Health>> {
    let queued = d.queued_count()?;
    Ok(axum::Json(Health {
        status: if d.is_stopping() { "stopping" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: d.uptime().as_secs(),
        worker: d.worker().into(),
        running: d.running_count() as u64,
        queued,
        max_running: d.limits().global as u64,
        tiers: host_tiers().to_vec(),
    }))
}

/// Counters and gauges in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(d): Shared) -> ApiResult<Response> {
    let m = &d.metrics;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, lines: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    let counters = [
        (
            "warren_tasks_submitted_total",
            "Tasks accepted.",
            &m.submitted,
        ),
        (
            "warren_tasks_rejected_total",
            "Submissions refused because the queue was full.",
            &m.rejected,
        ),
        (
            "warren_tasks_resumed_total",
            "Tasks resumed from checkpoints.",
            &m.resumed,
        ),
        (
            "warren_cells_started_total",
            "Cells started.",
            &m.cells_started,
        ),
        (
            "warren_model_turns_total",
            "Model turns taken.",
            &m.model_turns,
        ),
        ("warren_tool_calls_total", "Tool calls made.", &m.tool_calls),
    ];
    for (name, help, c) in counters {
        put(name, "counter", help, one(c.load(Ordering::Relaxed)));
    }
    let finished: Vec<(String, u64)> = {
        let f = m.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = f
            .iter()
            .map(|(s, n)| (format!("{{state=\"{s}\"}}"), *n))
            .collect();
        v.sort();
        v
    };
    put(
        "warren_tasks_finished_total",
        "counter",
        "Tasks that ended, by final state.",
        finished,
    );
    let gauges = [
        (
            "warren_tasks_running",
            "Tasks running in this daemon.",
            d.running_count() as u64,
        ),
        ("warren_tasks_queued", "Tasks queued.", d.queued_count()?),
        (
            "warren_uptime_seconds",
            "Seconds since the daemon started.",
            d.uptime().as_secs(),
        ),
        (
            "warren_resident_memory_bytes",
            "Resident memory of the daemon process.",
            rss_bytes(),
        ),
    ];
    for (name, help, v) in gauges {
        put(name, "gauge", help, one(v));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// Resident set size of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}
