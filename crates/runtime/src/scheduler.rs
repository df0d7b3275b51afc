//! Which task runs next.
//!
//! Rules, in order:
//! 1. at most `global` tasks run at once, and at most the agent's own limit per agent;
//! 2. among agents with a free slot, the one whose best queued task has the highest priority;
//! 3. on equal priority, the agent served least recently (so one agent with a thousand queued
//!    tasks cannot starve another with one);
//! 4. within an agent, highest priority then oldest (the store's claim order).
//!
//! The queue is bounded: a submission beyond `max_queued` is refused ([`SchedError::QueueFull`],
//! which the API answers with 429) instead of growing without limit. Claims go through the
//! store under a lease, so several schedulers sharing a store never run a task twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use warren_store::{NewTask, Store, StoreError, TaskRecord, TaskState};

/// Concurrency and queue limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Tasks running at once, in total.
    pub global: usize,
    /// Tasks running at once per agent, unless overridden.
    pub per_agent: usize,
    /// Per-agent overrides.
    pub agent: HashMap<String, usize>,
    /// Queued tasks accepted at most.
    pub max_queued: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: 8,
            per_agent: 4,
            agent: HashMap::new(),
            max_queued: 10_000,
        }
    }
}

/// Scheduling failures.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// The queue is full.
    #[error("the queue is full ({queued} tasks queued, at most {max}); retry later")]
    QueueFull {
        /// Queued now.
        queued: u64,
        /// The bound.
        max: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decides which queued task runs next, for one worker (a daemon).
pub struct Scheduler<S: ?Sized> {
    store: Arc<S>,
    limits: Limits,
    worker: String,
    lease: Duration,
    /// Running task id -> agent.
    running: HashMap<String, String>,
    /// Agent -> tick it was last served.
    served: HashMap<String, u64>,
    tick: u64,
    /// Queued count as last read from the store, kept current by this scheduler's own
    /// submissions and claims, and reread after [`QUEUED_FRESH`] (other processes may submit or
    /// claim too): counting a long queue on every submission would cost O(queue).
    queued: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

/// How long a queued count read from the store is trusted.
const QUEUED_FRESH: Duration = Duration::from_millis(250);

impl<S: Store + ?Sized> Scheduler<S> {
    /// A scheduler claiming as `worker` with leases of `lease`.
    pub fn new(store: Arc<S>, limits: Limits, worker: impl Into<String>, lease: Duration) -> Self {
        Scheduler {
            store,
            limits,
            worker: worker.into(),
            lease,
            running: HashMap::new(),
            served: HashMap::new(),
            tick: 0,
            queued: std::sync::Mutex::new(None),
        }
    }

    /// Queue a task, unless the queue is full.
    pub fn submit(&self, task: NewTask) -> Result<TaskRecord, SchedError> {
        let mut cache = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let queued = match *cache {
            Some((n, at)) if at.elapsed() < QUEUED_FRESH => n,
            _ => {
                let n = self.store.count(TaskState::Queued)?;
                *cache = Some((n, std::time::Instant::now()));
                n
            }
        };
        if queued >= self.limits.max_queued {
            // Refused on a count that may be stale: reread next time.
            *cache = None;
            return Err(SchedError::QueueFull {
                queued,
                max: self.limits.max_queued,
            });
        }
        let rec = self.store.submit(task)?;
        if let Some((n, _)) = cache.as_mut() {
            *n += 1;
        }
        Ok(rec)
    }

    fn claimed_one(&self) {
        let mut cache = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = cache.as_mut() {
            *n = n.saturating_sub(1);
        }
    }

    fn limit(&self, agent: &str) -> usize {
        self.limits
            .agent
            .get(agent)
            .copied()
            .unwrap_or(self.limits.per_agent)
    }

    fn running_for(&self, agent: &str) -> usize {
        self.running.values().filter(|a| *a == agent).count()
    }

    /// Claim the next task to start, if a slot is free and a task is waiting.
    pub fn start_next(&mut self) -> Result<Option<TaskRecord>, SchedError> {
        if self.running.len() >= self.limits.global {
            return Ok(None);
        }
        let mut candidates: Vec<(String, i32, i64)> = self
            .store
            .queued_agents()?
            .into_iter()
            .filter(|(agent, _, _)| self.running_for(agent) < self.limit(agent))
            .collect();
        // Highest priority; then least recently served; then oldest waiting.
        candidates.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| {
                    self.served
                        .get(&a.0)
                        .copied()
                        .unwrap_or(0)
                        .cmp(&self.served.get(&b.0).copied().unwrap_or(0))
                })
                .then_with(|| a.2.cmp(&b.2))
        });
        for (agent, _, _) in candidates {
            // Another scheduler may have taken the agent's last task: try the next agent.
            if let Some(task) = self.store.claim_agent(&agent, &self.worker, self.lease)? {
                self.claimed_one();
                self.tick += 1;
                self.served.insert(agent.clone(), self.tick);
                self.running.insert(task.id.clone(), agent);
                return Ok(Some(task));
            }
        }
        Ok(None)
    }

    /// A task this scheduler started has stopped running (any outcome): free its slot.
    pub fn finished(&mut self, task: &str) {
        self.running.remove(task);
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warren_store::sqlite::SqliteStore;

    fn store(name: &str) -> (Arc<SqliteStore>, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("warren-sched-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        (Arc::new(SqliteStore::open(&d.join("w.db")).unwrap()), d)
    }

    fn task(id: &str, agent: &str, priority: i32) -> NewTask {
        NewTask {
            id: id.into(),
            agent: agent.into(),
            agent_version: 1,
            goal: "g".into(),
            priority,
            ..NewTask::default()
        }
    }

    fn sched(s: &Arc<SqliteStore>, limits: Limits) -> Scheduler<SqliteStore> {
        Scheduler::new(s.clone(), limits, "w", Duration::from_secs(60))
    }

    #[test]
    fn global_and_per_agent_limits() {
        let (s, d) = store("limits");
        for i in 0..5 {
            s.submit(task(&format!("a{i}"), "a", 0)).unwrap();
            s.submit(task(&format!("b{i}"), "b", 0)).unwrap();
        }
        let mut sc = sched(
            &s,
            Limits {
                global: 3,
                per_agent: 2,
                agent: HashMap::from([("b".into(), 1)]),
                ..Limits::default()
            },
        );
        let started: Vec<String> =
            std::iter::from_fn(|| sc.start_next().unwrap().map(|t| t.agent)).collect();
        // a: at most 2, b: at most 1 (its override), 3 in total.
        assert_eq!(started.len(), 3);
        assert_eq!(started.iter().filter(|a| *a == "a").count(), 2);
        assert_eq!(started.iter().filter(|a| *a == "b").count(), 1);
        assert!(sc.start_next().unwrap().is_none(), "no slot free");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn agents_take_turns_so_none_starves() {
        let (s, d) = store("fair");
        for i in 0..20 {
            s.submit(task(&format!("a{i:02}"), "busy", 0)).unwrap();
        }
        s.submit(task("b0", "quiet", 0)).unwrap();
        s.submit(task("b1", "quiet", 0)).unwrap();
        let mut sc = sched(
            &s,
            Limits {
                global: 1,
                ..Limits::default()
            },
        );
        let mut order = Vec::new();
        for _ in 0..6 {
            let t = sc.start_next().unwrap().unwrap();
            order.push(t.agent.clone());
            sc.finished(&t.id);
        }
        // The quiet agent is served within the first turns despite 20 busy tasks.
        assert_eq!(&order[..4], ["busy", "quiet", "busy", "quiet"], "{order:?}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn priority_comes_first_and_cancelled_tasks_never_run() {
        let (s, d) = store("priority");
        s.submit(task("a-low", "a", 0)).unwrap();
        s.submit(task("b-high", "b", 9)).unwrap();
        s.submit(task("c-cancelled", "c", 99)).unwrap();
        s.transition("c-cancelled", TaskState::Cancelled, Some("by operator"))
            .unwrap();
        let mut sc = sched(
            &s,
            Limits {
                global: 1,
                ..Limits::default()
            },
        );
        let first = sc.start_next().unwrap().unwrap();
        assert_eq!(first.id, "b-high");
        sc.finished(&first.id);
        assert_eq!(sc.start_next().unwrap().unwrap().id, "a-low");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_queue_refuses_submissions() {
        let (s, d) = store("bounded");
        let sc = sched(
            &s,
            Limits {
                max_queued: 2,
                ..Limits::default()
            },
        );
        sc.submit(task("t1", "a", 0)).unwrap();
        sc.submit(task("t2", "a", 0)).unwrap();
        let e = sc.submit(task("t3", "a", 0)).unwrap_err();
        assert!(
            matches!(e, SchedError::QueueFull { queued: 2, max: 2 }),
            "{e}"
        );
        assert!(e.to_string().contains("retry later"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn two_schedulers_sharing_a_store_never_run_a_task_twice() {
        let (s, d) = store("shared");
        for i in 0..50 {
            s.submit(task(
                &format!("t{i:02}"),
                if i % 2 == 0 { "a" } else { "b" },
                0,
            ))
            .unwrap();
        }
        let path = d.join("w.db");
        let ids: Vec<Vec<String>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..2)
                .map(|w| {
                    let path = path.clone();
                    sc.spawn(move || {
                        let store = Arc::new(SqliteStore::open(&path).unwrap());
                        let mut sched = Scheduler::new(
                            store,
                            Limits {
                                global: 100,
                                per_agent: 100,
                                ..Limits::default()
                            },
                            format!("w{w}"),
                            Duration::from_secs(60),
                        );
                        std::iter::from_fn(|| sched.start_next().unwrap().map(|t| t.id)).collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: Vec<&String> = ids.iter().flatten().collect();
        let unique: std::collections::HashSet<&String> = all.iter().copied().collect();
        assert_eq!((all.len(), unique.len()), (50, 50));
        let _ = std::fs::remove_dir_all(d);
    }
}
