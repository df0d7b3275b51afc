//! Durable execution, proven the hard way: a real daemon is SIGKILLed at random moments,
//! twenty times, while tasks run in real cells; after each kill a new daemon resumes them.
//! At the end no task is lost, none ended other than succeeded, no tool command ran twice,
//! no model turn was recorded twice, and the model was asked again only for turns whose
//! answer had not been recorded when the daemon died.
//!
//! The mock model answers by conversation state (the number of tool results so far), so a
//! resumed task asking again gets the same answer for the same position.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_store::Store;
use warren_testkit::mockllm::{MockLlm, Turn};
use warren_testkit::{TempDir, require_process_tier};

use super::daemon::{DaemonProc, MANIFEST, deploy, goal_of, reply, tool_results, workspace};

const STEPS: usize = 6;
const KILLS: usize = 20;

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn a_daemon_killed_twenty_times_loses_no_task_and_repeats_no_step() {
    if !require_process_tier() {
        return;
    }
    let seed = std::env::var("WARREN_RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill-and-resume seed {seed} (WARREN_RESUME_SEED={seed} replays the kill times)");
    let mut rng = Lcg(seed);
    let t = TempDir::new("daemon-resume");
    let state = t.path().join("state");
    let ws = workspace(&t);
    deploy(&state, MANIFEST);
    let mock = steps_model();

    let mut ids: Vec<(String, String)> = Vec::new(); // (task id, goal)
    let ws_text = ws.display().to_string();
    for kill in 0..KILLS {
        let mut d = DaemonProc::start(&state, &mock, &[]);
        // Keep two unfinished tasks in flight.
        let unfinished = ids
            .iter()
            .filter(|(id, _)| {
                let (_, t) = d.call("GET", &format!("/v1/tasks/{id}"), None);
                !matches!(
                    t["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled" | "interrupted")
                )
            })
            .count();
        for _ in unfinished..2 {
            let goal = format!("job{}", ids.len());
            let (code, task) = d.call(
                "POST",
                "/v1/tasks",
                Some(&json!({"agent": "coder", "goal": goal, "workspace": ws_text})),
            );
            assert_eq!(code, 201, "{task}");
            ids.push((task["id"].as_str().unwrap().to_owned(), goal));
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        d.kill();
        eprintln!("kill {}: daemon SIGKILLed", kill + 1);
    }

    // A last daemon finishes everything.
    let d = DaemonProc::start(&state, &mock, &[]);
    let deadline = Instant::now() + Duration::from_secs(240);
    for (id, _) in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = d.wait_done(id, left);
        assert_eq!(
            done["state"],
            "succeeded",
            "task {id}: {done}\n{}",
            d.log.lock().unwrap()
        );
    }
    let (_, all) = d.call("GET", "/v1/tasks?limit=10000", None);
    assert_eq!(
        all.as_array().unwrap().len(),
        ids.len(),
        "no task lost or invented"
    );

    let store = warren_store::sqlite::SqliteStore::open(&state.join("warren.db")).unwrap();
    let mut recorded_turns = 0usize;
    let mut resumed = 0usize;
    for (id, goal) in &ids {
        let (turns, again) = check_task(&store, &state, id, goal);
        recorded_turns += turns;
        resumed += usize::from(again);
    }
    assert!(resumed > 0, "the kills interrupted running tasks");

    // Recorded turns were never paid for again: every request beyond the recorded turns was
    // in flight when a daemon died (at most one per running task per kill).
    let mut asked: HashMap<(String, usize), usize> = HashMap::new();
    for r in mock.requests() {
        *asked
            .entry((goal_of(&r.body), tool_results(&r.body)))
            .or_default() += 1;
    }
    let requests: usize = asked.values().sum();
    assert!(
        requests <= recorded_turns + 2 * KILLS,
        "{requests} model requests for {recorded_turns} recorded turns and {KILLS} kills"
    );
    eprintln!(
        "{} tasks, {KILLS} kills, {resumed} tasks resumed, {recorded_turns} turns recorded, {requests} model requests",
        ids.len()
    );
}

/// Check one finished task of the mock model above: each model turn recorded once per
/// position, each tool result once, every command's effect (in the task's layer under `work`)
/// at most once and in order, a missing one only where its call was reported interrupted.
/// Returns the model turns recorded and whether the task was resumed (claimed more than once).
pub fn check_task(store: &dyn Store, work: &Path, id: &str, goal: &str) -> (usize, bool) {
    let mut recorded_turns = 0usize;
    let cps = store.checkpoints(id).unwrap();
    let steps: Vec<Value> = cps.iter().map(|c| c.payload.clone()).collect();
    // Each model turn is recorded once per position in the conversation (the number of
    // tool results before it: what the model was asked), and each tool result once.
    let mut positions = Vec::new();
    let mut tool_results_seen = HashSet::new();
    let mut interrupted = HashSet::new();
    for s in &steps {
        match s["step"].as_str().unwrap() {
            "model" => {
                recorded_turns += 1;
                let calls: Vec<String> = s["response"]["tool_calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_str().unwrap().to_owned())
                    .collect();
                let at = tool_results_seen.len();
                assert!(
                    positions.last().is_none_or(|(p, _)| *p < at),
                    "task {id}: the model turn at position {at} was recorded twice: {steps:?}"
                );
                positions.push((at, calls.join(",")));
            }
            "tool" => {
                let call = s["call_id"].as_str().unwrap().to_owned();
                if s["content"].as_str().unwrap().contains("interrupted") {
                    interrupted.insert(call.clone());
                }
                assert!(
                    tool_results_seen.insert(call.clone()),
                    "task {id}: result of {call} recorded twice"
                );
            }
            _ => {}
        }
    }
    // Positions 0..STEPS asked for the steps, then finish (asked again only if a kill
    // interrupted the finish call itself).
    let expected: Vec<(usize, String)> = (0..STEPS).map(|k| (k, format!("c{k}"))).collect();
    assert_eq!(positions[..STEPS], expected[..], "task {id}");
    assert!(
        positions[STEPS..].iter().all(|(_, c)| c.starts_with("fin")),
        "task {id}: {positions:?}"
    );
    // The commands' effects: every step at most once, in order; a step is missing only
    // if a kill interrupted its command (the agent was told its effect is unknown).
    let layer = work.join("changes").join(id).join("upper");
    let text = std::fs::read_to_string(layer.join(format!("steps-{goal}.txt"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut last = None;
    for l in &lines {
        let k: usize = l.rsplit('-').next().unwrap().parse().unwrap();
        assert!(
            last.is_none_or(|p| k > p),
            "task {id}: step {k} ran twice or out of order: {lines:?}"
        );
        last = Some(k);
    }
    for k in 0..STEPS {
        let present = lines.contains(&format!("{goal}-step-{k}").as_str());
        assert!(
            present || interrupted.contains(&format!("c{k}")),
            "task {id}: step {k} neither ran nor was reported interrupted: {lines:?}"
        );
    }
    let t = store.get_task(id).unwrap();
    (recorded_turns, t.attempts > 1)
}

/// A model that asks for STEPS shell commands, each appending a numbered line to the goal's
/// steps file, then finishes. It answers by conversation position, so a resumed task asking
/// again gets the same answer.
pub fn steps_model() -> MockLlm {
    MockLlm::start_responder(|b| {
        let n = tool_results(b);
        let goal = goal_of(b);
        if n < STEPS {
            // Vary where in a turn the kill lands: model latency 0–150 ms, a 50 ms command.
            let delay = Duration::from_millis((n as u64 * 37 + goal.len() as u64 * 11) % 150);
            Turn::Slow {
                delay,
                then: Box::new(reply(vec![(
                    &format!("c{n}"),
                    "shell",
                    json!({"command": format!("echo {goal}-step-{n} >> /workspace/steps-{goal}.txt; sleep 0.05")}),
                )])),
            }
        } else {
            // Call ids are unique per position, as a real model's are.
            reply(vec![(
                &format!("fin{n}"),
                "finish",
                json!({"summary": format!("{goal} done")}),
            )])
        }
    })
    .unwrap()
}
