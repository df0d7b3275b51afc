//! The task queue under load: claims per second and claim latency, PostgreSQL beside SQLite,
//! with one node and with three, and how long a dead node's tasks take to be claimed again.
//!
//! `cargo bench -p warren-store --bench claims [-- --tasks N]` (`-- --probe`: one query's round trip)
//!
//! A *node* is one store handle (its own connections) with one claiming loop, as a daemon's
//! scheduler has; three nodes are three handles claiming from one queue at once. Each claim is
//! followed by the task's end (`running → succeeded`), so a cycle is a whole dispatch. The
//! PostgreSQL server is a private one on a unix socket with its durable defaults (fsync and
//! synchronous commit on); SQLite runs as Warren runs it (WAL, synchronous=NORMAL: a crash of
//! the process loses nothing, a power cut may lose the last commits). Both on this machine,
//! in this run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_store::postgres::PgStore;
use warren_store::sqlite::SqliteStore;
use warren_store::{NewTask, Store, TaskState};
use warren_testkit::bench::arg;

const LEASE: Duration = Duration::from_secs(30);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tasks = arg("--tasks", 3000);
    warren_testkit::pg::use_durable_server();
    let dir = std::env::temp_dir().join(format!("warren-bench-claims-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    if std::env::args().any(|a| a == "--probe") {
        let url = warren_testkit::pg::fresh_database("probe").unwrap();
        let s = PgStore::connect(&url).unwrap();
        for _ in 0..100 {
            s.schema_version().unwrap();
        }
        let t0 = Instant::now();
        for _ in 0..2000 {
            s.schema_version().unwrap();
        }
        println!(
            "one query: {:.1} us",
            t0.elapsed().as_secs_f64() * 1e6 / 2000.0
        );
        return;
    }
    println!("claims: {tasks} tasks per run; each cycle = claim + end the task");
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "store, nodes", "claims/s", "p50 claim", "p95 claim"
    );
    let mut results = Vec::new();
    for nodes in [1usize, 3] {
        let path = dir.join(format!("sqlite-{nodes}.db"));
        let open = move || Arc::new(SqliteStore::open(&path).unwrap()) as Arc<dyn Store>;
        results.push(("sqlite", nodes, run(&open, nodes, tasks)));
        let Some(url) = warren_testkit::pg::fresh_database(&format!("bench{nodes}")) else {
            return;
        };
        let open = move || Arc::new(PgStore::connect(&url).unwrap()) as Arc<dyn Store>;
        results.push(("postgres", nodes, run(&open, nodes, tasks)));
        // The same with commits acknowledged before their WAL reaches the disk (an operator's
        // choice per database: a crash of the server may lose the last commits, as a power
        // cut may lose SQLite's in WAL/NORMAL mode).
        let Some(url) = warren_testkit::pg::fresh_database(&format!("benchasync{nodes}")) else {
            return;
        };
        let (base, db) = url.rsplit_once('/').unwrap();
        warren_testkit::pg::run_sql(
            &format!("{base}/postgres"),
            &format!("ALTER DATABASE {db} SET synchronous_commit = off"),
        )
        .unwrap();
        let open = move || Arc::new(PgStore::connect(&url).unwrap()) as Arc<dyn Store>;
        results.push(("postgres async-commit", nodes, run(&open, nodes, tasks)));
    }
    for (store, nodes, r) in &results {
        println!(
            "{:<28} {:>10.0} {:>9.2} ms {:>9.2} ms",
            format!("{store}, {nodes}"),
            r.per_sec,
            r.p50_ms,
            r.p95_ms
        );
    }
    let rate = |s: &str, n: usize| {
        results
            .iter()
            .find(|(st, nn, _)| *st == s && *nn == n)
            .unwrap()
            .2
            .per_sec
    };
    println!(
        "ratio postgres/sqlite claims/s: 1 node {:.2}, 3 nodes {:.2}; postgres 3 nodes/1 node {:.2}; async-commit/durable 1 node {:.2}",
        rate("postgres", 1) / rate("sqlite", 1),
        rate("postgres", 3) / rate("sqlite", 3),
        rate("postgres", 3) / rate("postgres", 1),
        rate("postgres async-commit", 1) / rate("postgres", 1),
    );

    // A node dies holding tasks: how long until another node holds every one of them.
    let Some(url) = warren_testkit::pg::fresh_database("reclaim") else {
        return;
    };
    let lease = Duration::from_secs(2);
    let held = 50;
    let dead = PgStore::connect(&url).unwrap();
    let live = PgStore::connect(&url).unwrap();
    submit(&dead, "r", held);
    for _ in 0..held {
        dead.claim("dead", lease).unwrap().unwrap();
    }
    drop(dead);
    let died = Instant::now();
    let mut got = 0;
    // The daemon's loop: recover expired leases every half lease, claim what is queued.
    let mut last_recover = Instant::now() - lease;
    while got < held {
        if last_recover.elapsed() >= lease / 2 {
            last_recover = Instant::now();
            live.recover_expired().unwrap();
        }
        while live.claim("live", LEASE).unwrap().is_some() {
            got += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = died.elapsed();
    println!(
        "re-claim: {held} tasks of a dead node held again by another {:.2} s after its death \
         (lease {:.0} s; recovery pass every half lease): {:.2} s past the lease",
        took.as_secs_f64(),
        lease.as_secs_f64(),
        took.as_secs_f64() - lease.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
}

fn submit(s: &dyn Store, prefix: &str, n: usize) {
    for i in 0..n {
        s.submit(NewTask {
            id: format!("{prefix}{i:06}"),
            agent: "coder".into(),
            agent_version: 1,
            goal: "g".into(),
            priority: (i % 3) as i32,
            ..NewTask::default()
        })
        .unwrap();
    }
}

fn run(open: &(dyn Fn() -> Arc<dyn Store> + Sync), nodes: usize, tasks: usize) -> Figures {
    let setup = open();
    submit(&*setup, "t", tasks);
    let handles: Vec<Arc<dyn Store>> = (0..nodes).map(|_| open()).collect();
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|sc| {
        let hs: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(n, s)| {
                sc.spawn(move || {
                    let worker = format!("node{n}");
                    let mut lat = Vec::new();
                    loop {
                        let t0 = Instant::now();
                        let Some(t) = s.claim(&worker, LEASE).unwrap() else {
                            break;
                        };
                        lat.push(t0.elapsed());
                        s.transition(&t.id, TaskState::Succeeded, None).unwrap();
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    assert_eq!(lat.len(), tasks, "every task claimed once");
    assert_eq!(setup.count(TaskState::Succeeded).unwrap(), tasks as u64);
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Figures {
        per_sec: tasks as f64 / wall.as_secs_f64(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
    }
}
