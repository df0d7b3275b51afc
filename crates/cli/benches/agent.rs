//! Agent step overhead: `cargo bench -p warren-cli --bench agent`.
//!
//! A scripted model answers every turn instantly with one trivial tool call (`shell: true`);
//! the loop validates it, runs it in a real cell, appends the result and asks again. The
//! step time minus the time of the command itself (the same `sh -c true` exec'd directly into
//! the same kind of cell) is Warren's runtime overhead per step. Printed as p50/p99; figures,
//! not assertions.
#![allow(clippy::expect_used)] // a benchmark aborts loudly on failure

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use warren_agent::{Agent, AgentConfig, AgentEvent, Unrestricted};
use warren_cell::{Cell, CellSpec, Collect, ExecSpec, JailProgram, ProcessCell};
use warren_llm::{
    ChatRequest, ChatResponse, EventSink, LlmError, Provider, StopReason, ToolCall, Usage,
};

/// Answers instantly: `steps` trivial shell calls, then `finish`.
struct Scripted {
    steps: usize,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn chat(&self, _r: &ChatRequest, _e: EventSink<'_>) -> Result<ChatResponse, LlmError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let call = if n < self.steps {
            ToolCall {
                id: format!("c{n}"),
                name: "shell".into(),
                arguments: r#"{"command":"true"}"#.into(),
            }
        } else {
            ToolCall {
                id: "f".into(),
                name: "finish".into(),
                arguments: r#"{"summary":"done"}"#.into(),
            }
        };
        Ok(ChatResponse {
            text: String::new(),
            tool_calls: vec![call],
            usage: Usage::default(),
            stop_reason: StopReason::ToolUse,
        })
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let scale: f64 = std::env::var("WARREN_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let steps = ((400.0 * scale) as usize).max(20);
    let state = std::env::temp_dir().join(format!("warren-bench-agent-{}", std::process::id()));
    let jail = JailProgram {
        program: env!("CARGO_BIN_EXE_warren").into(),
        args: vec!["__jail".into()],
        fork_server: true,
    };
    let spec = CellSpec::new(&state);

    // The command by itself.
    let cell = ProcessCell::start(&spec, &jail).expect("cell");
    let exec = ExecSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
        max_output_bytes: 1 << 20,
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    let mut cmd: Vec<Duration> = (0..steps)
        .map(|_| {
            let t = Instant::now();
            cell.exec(&exec, None, &mut Collect::default())
                .expect("exec");
            t.elapsed()
        })
        .collect();
    drop(cell);

    // The same command as agent steps.
    let cell: Arc<dyn Cell> = Arc::new(ProcessCell::start(&spec, &jail).expect("cell"));
    let provider = Arc::new(Scripted {
        steps,
        calls: AtomicUsize::new(0),
    });
    let config = AgentConfig {
        model: "scripted".into(),
        max_turns: steps as u32 + 5,
        ..AgentConfig::default()
    };
    let agent = Agent::new(provider, cell, config, Arc::new(Unrestricted), None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut turns: Vec<Instant> = Vec::with_capacity(steps + 2);
    let report = rt.block_on(agent.run("benchmark", &mut |e| {
        if matches!(e, AgentEvent::Turn { .. }) {
            turns.push(Instant::now());
        }
    }));
    report.expect("agent run");
    let mut step: Vec<Duration> = turns.windows(2).map(|w| w[1] - w[0]).collect();

    let (c50, c99) = (pct(&mut cmd, 0.5), pct(&mut cmd, 0.99));
    let (s50, s99) = (pct(&mut step, 0.5), pct(&mut step, 0.99));
    println!(
        "agent step overhead ({steps} steps, scripted zero-latency model, shell `true` in a real cell)"
    );
    println!(
        "command alone (exec sh -c true):  p50 {:>7.3} ms  p99 {:>7.3} ms",
        ms(c50),
        ms(c99)
    );
    println!(
        "agent step (model + tool + loop): p50 {:>7.3} ms  p99 {:>7.3} ms",
        ms(s50),
        ms(s99)
    );
    println!(
        "overhead per step beyond the command: p50 {:.3} ms  p99 {:.3} ms (target p50 <= 1 ms)",
        ms(s50.saturating_sub(c50)),
        ms(s99.saturating_sub(c99))
    );
    let _ = std::fs::remove_dir_all(&state);
}
