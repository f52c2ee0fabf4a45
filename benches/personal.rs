//! Personal data on a durable PostgreSQL (fsync, synchronous_commit and
//! full_page_writes on): events with two personal fields appended and
//! loaded through a `PersonalStore`, against the same events with plain
//! fields through the `PgEventStore` it wraps, in the same run,
//! one operation of each in turn (3 rounds, medians).
//!
//! - append: one event per append, each to a stream of its own subject
//!   (a new data key per subject: a key row is written beside the first
//!   event, as a new patient's registration does);
//! - append, known subject: one event per append to streams whose subject
//!   already has a key (cached in the process);
//! - load: `read_stream_as` of a 10-event stream, keys cached;
//! - cold key: the same load from a process with no key cached (one key
//!   row read and unwrapped per stream).
//!
//! Prints ops/s, the ratio, p50/p99 per operation. Target (issue 21):
//! ≤ 1.2x the time of the plain events, i.e. ≥ 0.83x the rate.
//!
//! `scripts/with-services --durable cargo bench --features testing,personal --bench personal`

use std::time::{Duration, Instant};

use annals::personal::{LocalKeyProvider, Personal, PersonalStore};
use annals::postgres::testing::TestDatabase;
use annals::postgres::{PgEventStore, PgSubjectKeys};
use annals::{Event, EventStoreExt, ExpectedVersion, Metadata};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod common;

const STREAMS: usize = 400;
const ROUNDS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "bench.personal_noted", subject = envelope.stream_id)]
struct PersonalNoted {
    visit: u32,
    name: Personal<String>,
    phone: Personal<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "bench.plain_noted")]
struct PlainNoted {
    visit: u32,
    name: String,
    phone: String,
}

fn personal(i: usize) -> PersonalNoted {
    PersonalNoted {
        visit: i as u32,
        name: Personal::Known(format!("Patient Number {i}")),
        phone: Personal::Known(format!("+351 555 {i:06}")),
    }
}

fn plain(i: usize) -> PlainNoted {
    PlainNoted {
        visit: i as u32,
        name: format!("Patient Number {i}"),
        phone: format!("+351 555 {i:06}"),
    }
}

type Store = PersonalStore<PgEventStore, PgSubjectKeys<LocalKeyProvider>>;

fn kek() -> LocalKeyProvider {
    LocalKeyProvider::from_base64("kek-1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .expect("a KEK")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone, Copy)]
struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn run_of(mut latencies: Vec<Duration>, elapsed: Duration) -> Run {
    latencies.sort();
    Run {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// Runs `a` and `b` alternately, `n` times each, so that both see the same
/// moments of the machine (a noisy neighbour slows both, not one side);
/// each side's rate is its operations over the sum of its own latencies.
async fn paired<A, FA, B, FB>(n: usize, mut a: A, mut b: B) -> (Run, Run)
where
    A: FnMut(usize) -> FA,
    FA: std::future::Future<Output = ()>,
    B: FnMut(usize) -> FB,
    FB: std::future::Future<Output = ()>,
{
    let (mut la, mut lb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        a(i).await;
        la.push(t.elapsed());
        let t = Instant::now();
        b(i).await;
        lb.push(t.elapsed());
    }
    let (ta, tb) = (la.iter().sum(), lb.iter().sum());
    (run_of(la, ta), run_of(lb, tb))
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, personal: &[Run], plain: &[Run]) {
    let s = median(personal, |r| r.per_second);
    let b = median(plain, |r| r.per_second);
    let time_ratio = b / s;
    let verdict = if time_ratio <= 1.2 { "met" } else { "NOT met" };
    println!(
        "{name:<36} {s:>8.0} ops/s vs {b:>8.0} plain: {time_ratio:.2}x the time (target ≤ 1.20x: {verdict}); p50 {:.2} / p99 {:.2} ms vs {:.2} / {:.2} ms",
        median(personal, |r| ms(r.p50)),
        median(personal, |r| ms(r.p99)),
        median(plain, |r| ms(r.p50)),
        median(plain, |r| ms(r.p99)),
    );
}

fn main() {
    common::require_durable("personal");
    let rt = common::runtime();
    rt.block_on(async {
        let db = TestDatabase::new().await;
        // annals' production pool (no ping at checkout), as an application
        // has it; the test database's pool pings on every checkout, which
        // the key statements would pay and the plain appends (on the group
        // commit's own connection) would not
        let pool = annals::postgres::PoolConfig::from_options(db.connect_options())
            .connect()
            .await
            .expect("a pool");
        let inner = annals::postgres::PgEventStore::builder(pool.clone())
            .build()
            .await
            .expect("a store");
        let keys = PgSubjectKeys::new(pool, kek());
        let store: Store = PersonalStore::new(inner.clone(), keys.clone());
        let meta = Metadata::new();
        let (mut new_p, mut new_b, mut known_p, mut known_b) = (vec![], vec![], vec![], vec![]);
        let (mut load_p, mut load_b, mut cold_p, mut cold_b) = (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            let (store, inner, meta) = (&store, &inner, &meta);
            // appends, each to a new subject's stream
            let (p, b) = paired(
                STREAMS,
                |i| async move {
                    let stream = format!("p-{round}-{i}");
                    store
                        .append_events(&stream, ExpectedVersion::NoStream, &[personal(0)], meta)
                        .await
                        .expect("append personal");
                },
                |i| async move {
                    let stream = format!("b-{round}-{i}");
                    inner
                        .append_events(&stream, ExpectedVersion::NoStream, &[plain(0)], meta)
                        .await
                        .expect("append plain");
                },
            )
            .await;
            new_p.push(p);
            new_b.push(b);
            // 9 more events per stream: subjects known (keys cached)
            let (p, b) = paired(
                STREAMS * 9,
                |i| async move {
                    let stream = format!("p-{round}-{}", i % STREAMS);
                    store
                        .append_events(&stream, ExpectedVersion::Any, &[personal(i)], meta)
                        .await
                        .expect("append personal");
                },
                |i| async move {
                    let stream = format!("b-{round}-{}", i % STREAMS);
                    inner
                        .append_events(&stream, ExpectedVersion::Any, &[plain(i)], meta)
                        .await
                        .expect("append plain");
                },
            )
            .await;
            known_p.push(p);
            known_b.push(b);
            // loads of the 10-event streams, keys cached
            let (p, b) = paired(
                STREAMS,
                |i| async move {
                    let read = store
                        .read_stream_as::<PersonalNoted>(&format!("p-{round}-{i}"), ..)
                        .await
                        .expect("load personal");
                    assert_eq!(read.len(), 10);
                    assert!(read[0].payload.name.known().is_some());
                },
                |i| async move {
                    let read = inner
                        .read_stream_as::<PlainNoted>(&format!("b-{round}-{i}"), ..)
                        .await
                        .expect("load plain");
                    assert_eq!(read.len(), 10);
                },
            )
            .await;
            load_p.push(p);
            load_b.push(b);
            // the same loads from a process with no key cached
            let cold: Store = PersonalStore::new(inner.clone(), keys.clone());
            let cold = &cold;
            let (p, b) = paired(
                STREAMS,
                |i| async move {
                    let read = cold
                        .read_stream_as::<PersonalNoted>(&format!("p-{round}-{i}"), ..)
                        .await
                        .expect("cold load personal");
                    assert!(read[9].payload.phone.known().is_some());
                },
                |i| async move {
                    inner
                        .read_stream_as::<PlainNoted>(&format!("b-{round}-{i}"), ..)
                        .await
                        .expect("load plain");
                },
            )
            .await;
            cold_p.push(p);
            cold_b.push(b);
            assert_eq!(cold.cached_keys(), STREAMS, "one key per subject cached");
        }
        println!(
            "\npersonal data: 2 personal fields per event, {STREAMS} subjects per round, {ROUNDS} rounds (medians); keys cached in the writing process: {}",
            store.cached_keys()
        );
        report("append, new subject (key created)", &new_p, &new_b);
        report("append, known subject (key cached)", &known_p, &known_b);
        report("load 10 events, key cached", &load_p, &load_b);
        report("load 10 events, cold key", &cold_p, &cold_b);
    });
}
