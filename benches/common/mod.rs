//! Shared by the benchmarks: the event types, and the recorder that turns the
//! samples of each annals/baseline pair into the ratio summary printed at the
//! end of a run.
#![allow(dead_code)] // each bench uses part of this module

pub(crate) mod scores;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use annals::Event;
use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

// --- timing ------------------------------------------------------------------

/// A 2-worker multi-thread runtime for the database benches.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Times `f` once.
pub(crate) fn timed(f: impl FnOnce()) -> std::time::Duration {
    let start = std::time::Instant::now();
    f();
    start.elapsed()
}

// --- the server ----------------------------------------------------------------

/// Refuses to run a benchmark that writes on a server whose commits are not
/// durable (`fsync`, `synchronous_commit` and `full_page_writes` must be
/// on): such figures say nothing about commits. `ANNALS_BENCH_FAST=1`
/// runs it anyway, for comparisons with figures measured that way before
/// (say so next to them).
pub(crate) fn require_durable(bench: &str) {
    if std::env::var("ANNALS_BENCH_FAST").is_ok_and(|v| v == "1") {
        eprintln!("{bench}: ANNALS_BENCH_FAST=1: running on whatever server DATABASE_URL names");
        return;
    }
    let settings: Vec<(String, String)> = runtime().block_on(async {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL: run the bench through scripts/with-services --durable");
        let pool = annals::postgres::sqlx::PgPool::connect(&url)
            .await
            .expect("connecting to DATABASE_URL");
        annals::postgres::sqlx::query_as(
            "SELECT name, setting FROM pg_settings
              WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes') ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .expect("reading the server's settings")
    });
    println!("server: {settings:?}");
    assert!(
        settings.len() == 3 && settings.iter().all(|(_, v)| v == "on"),
        "{bench} writes, so it runs on a durable server: \
         `scripts/with-services --durable cargo bench --features testing --bench {bench}` \
         (ANNALS_BENCH_FAST=1 runs it on a fast one anyway); this server has {settings:?}"
    );
}

// --- events ------------------------------------------------------------------

/// `lead.created` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct LeadCreated {
    pub(crate) name: String,
}

/// `lead.scored` v1: no confidence yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct LeadScoredV1 {
    pub(crate) lead_id: Uuid,
    #[schemars(range(max = 100))]
    pub(crate) score: u8,
    pub(crate) model: String,
    pub(crate) reasons: Vec<String>,
}

pub(crate) const DEFAULT_CONFIDENCE: f32 = 0.5;

fn default_confidence() -> f32 {
    DEFAULT_CONFIDENCE
}

/// `lead.scored` v2 (current). `confidence` defaults to what the v1 → v2
/// upcast fills in, so a v1 payload also deserializes straight into this
/// type with the same result: the plain-serde baseline decodes the same
/// bytes into the current type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct LeadScored {
    pub(crate) lead_id: Uuid,
    #[schemars(range(max = 100))]
    pub(crate) score: u8,
    pub(crate) model: String,
    pub(crate) reasons: Vec<String>,
    #[serde(default = "default_confidence")]
    pub(crate) confidence: f32,
}

impl From<LeadScoredV1> for LeadScored {
    fn from(v1: LeadScoredV1) -> Self {
        LeadScored {
            lead_id: v1.lead_id,
            score: v1.score,
            model: v1.model,
            reasons: v1.reasons,
            confidence: DEFAULT_CONFIDENCE,
        }
    }
}

#[derive(Event, Debug, Clone, PartialEq)]
pub(crate) enum LeadEvent {
    Created(LeadCreated),
    #[event(version = 2, history(1 = LeadScoredV1))]
    Scored(LeadScored),
}

const REASONS: &[&str] = &[
    "opened 3 emails",
    "visited the pricing page",
    "booked a consultation",
    "came from a referral",
    "asked about financing",
];

/// A deterministic, varied v1 payload (about 150 bytes of JSON).
pub(crate) fn scored_v1(i: usize) -> LeadScoredV1 {
    LeadScoredV1 {
        lead_id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 | i as u128),
        score: (i % 101) as u8,
        model: format!("gbm-2024-{:02}", i % 12 + 1),
        reasons: (0..1 + i % 3)
            .map(|k| REASONS[(i + k) % REASONS.len()].to_owned())
            .collect(),
    }
}

/// The current-version event for `i`.
pub(crate) fn scored(i: usize) -> LeadScored {
    LeadScored {
        confidence: (i % 100) as f32 / 100.0,
        ..scored_v1(i).into()
    }
}

pub(crate) fn raw<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("serialize a payload")
}

// --- samples, paired runs and the summary -------------------------------------

type Samples = BTreeMap<String, Vec<(u64, Duration)>>;

static SAMPLES: Mutex<Samples> = Mutex::new(BTreeMap::new());
/// Median annals/baseline time ratio of the paired (interleaved) rounds,
/// with its lower and upper quartiles (how much the rounds disagree).
static PAIRED: Mutex<BTreeMap<(String, String), Paired>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy)]
struct Paired {
    median: f64,
    q1: f64,
    q3: f64,
}

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One measured operation: runs one iteration (its setup untimed) and
/// returns the time of the measured part.
pub(crate) type Op<'a> = Box<dyn Fn() -> Duration + 'a>;

/// Runs `routine` under criterion's `iter_custom` and records every call
/// (iterations, time) under `key` for the summary.
fn measure<R>(b: &mut Bencher<'_, WallTime>, key: &str, mut routine: R)
where
    R: FnMut(u64) -> Duration,
{
    b.iter_custom(|iters| {
        let d = routine(iters);
        lock(&SAMPLES)
            .entry(key.to_owned())
            .or_default()
            .push((iters, d));
        d
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The median time per iteration over the last `n` calls recorded under
/// `key` (criterion's measurement samples come after its warm-up calls).
fn per_iteration(key: &str, n: usize) -> Option<Duration> {
    let all = lock(&SAMPLES);
    let recorded = all.get(key)?;
    let start = recorded.len().saturating_sub(n);
    let per: Vec<f64> = recorded[start..]
        .iter()
        .map(|(iters, d)| d.as_secs_f64() / (*iters).max(1) as f64)
        .collect();
    Some(Duration::from_secs_f64(median(per)))
}

/// Benchmarks every op of a group with criterion (keys `group/name`), then,
/// for each (annals, baseline) pair, runs `rounds` interleaved rounds
/// (A B, B A, A B, ...) and keeps the median per-round time ratio: a second
/// estimate that background load drifting between criterion's runs of the
/// two functions cannot skew.
pub(crate) fn run_group(
    c: &mut Criterion,
    group_name: &str,
    configure: impl FnOnce(&mut BenchmarkGroup<'_, WallTime>),
    ops: &[(&str, Op<'_>)],
    pairs: &[(&str, &str)],
    rounds: usize,
) {
    let mut group = c.benchmark_group(group_name);
    configure(&mut group);
    for (name, op) in ops {
        let key = format!("{group_name}/{name}");
        group.bench_function(*name, |b| {
            measure(b, &key, |iters| (0..iters).map(|_| op()).sum())
        });
    }
    group.finish();
    let find = |name: &str| {
        ops.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, op)| op)
            .unwrap_or_else(|| panic!("no op `{name}` in group {group_name}"))
    };
    for (a, b) in pairs {
        let (ka, kb) = (format!("{group_name}/{a}"), format!("{group_name}/{b}"));
        let ran = {
            let samples = lock(&SAMPLES);
            samples.contains_key(&ka) && samples.contains_key(&kb)
        };
        if !ran {
            continue; // filtered out of this run
        }
        let (op_a, op_b) = (find(a), find(b));
        let mut ratios = Vec::with_capacity(rounds);
        for r in 0..rounds {
            let (ta, tb) = if r % 2 == 0 {
                let ta = op_a();
                (ta, op_b())
            } else {
                let tb = op_b();
                (op_a(), tb)
            };
            ratios.push(ta.as_secs_f64() / tb.as_secs_f64());
        }
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let quartile = |q: usize| sorted[(q * (sorted.len() - 1) + 2) / 4];
        let (q1, q3) = (quartile(1), quartile(3));
        let ratio = median(ratios);
        eprintln!(
            "paired {ka} / {kb}: median time ratio {ratio:.3} (quartiles {q1:.3}..{q3:.3}) over {rounds} rounds"
        );
        lock(&PAIRED).insert(
            (ka, kb),
            Paired {
                median: ratio,
                q1,
                q3,
            },
        );
    }
}

/// How a comparison's ratio is read.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// annals time / baseline time must be at most this.
    TimeAtMost(f64),
    /// annals throughput / baseline throughput must be at least this.
    ThroughputAtLeast(f64),
    /// No target: reported only.
    None,
}

/// One line of the summary: annals against its baseline.
pub(crate) struct Comparison {
    pub(crate) label: &'static str,
    pub(crate) annals: &'static str,
    pub(crate) baseline: &'static str,
    /// Events (or payloads) per iteration, for the events/s columns.
    pub(crate) events: u64,
    pub(crate) target: Target,
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn rate(events: u64, d: Duration) -> String {
    let r = events as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

/// Prints the ratio summary of every comparison measured in this run to
/// stderr. Ratios are annals/baseline: of times for `TimeAtMost` and `None`,
/// of throughputs for `ThroughputAtLeast`.
pub(crate) fn print_summary(title: &str, samples_per_bench: usize, rows: &[Comparison]) {
    let mut out = format!(
        "\n=== {title}: annals vs baseline ===\n\
         times: median per iteration of criterion's last {samples_per_bench} samples; \
         ratio: from those medians; paired: median ratio of interleaved rounds, \
         spread: its quartiles (the middle half of the rounds)\n"
    );
    out.push_str(&format!(
        "{:<58} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>13}  {}\n",
        "comparison",
        "annals",
        "baseline",
        "annals/s",
        "base/s",
        "ratio",
        "paired",
        "spread",
        "target"
    ));
    let paired = lock(&PAIRED).clone();
    for row in rows {
        let (Some(a), Some(b)) = (
            per_iteration(row.annals, samples_per_bench),
            per_iteration(row.baseline, samples_per_bench),
        ) else {
            continue; // filtered out of this run
        };
        let time_ratio = a.as_secs_f64() / b.as_secs_f64();
        let paired_time = paired
            .get(&(row.annals.to_owned(), row.baseline.to_owned()))
            .copied();
        // the ratio as the target reads it, and whether a ratio meets it
        // as the target reads it: throughput ratios are inverted (and so
        // are their quartiles, which swap places)
        let (ratio, paired_ratio, spread, target) = match row.target {
            Target::ThroughputAtLeast(t) => (
                1.0 / time_ratio,
                paired_time.map(|p| 1.0 / p.median),
                paired_time.map(|p| (1.0 / p.q3, 1.0 / p.q1)),
                format!("throughput >= {t}x"),
            ),
            Target::TimeAtMost(t) => (
                time_ratio,
                paired_time.map(|p| p.median),
                paired_time.map(|p| (p.q1, p.q3)),
                format!("time <= {t}x"),
            ),
            Target::None => (
                time_ratio,
                paired_time.map(|p| p.median),
                paired_time.map(|p| (p.q1, p.q3)),
                "time ratio".to_owned(),
            ),
        };
        let ok = |r: f64| match row.target {
            Target::ThroughputAtLeast(t) => r >= t,
            Target::TimeAtMost(t) => r <= t,
            Target::None => true,
        };
        let verdict = match (row.target, paired_ratio) {
            (Target::None, _) => String::new(),
            (_, None) => if ok(ratio) { ": met" } else { ": MISSED" }.to_owned(),
            (_, Some(p)) => match (ok(ratio), ok(p)) {
                (true, true) => ": met".to_owned(),
                (false, false) => ": MISSED".to_owned(),
                _ => ": borderline (estimates disagree)".to_owned(),
            },
        };
        out.push_str(&format!(
            "{:<58} {:>10} {:>10} {:>10} {:>10} {:>6.3}x {:>7} {:>13}  {target}{verdict}\n",
            row.label,
            human(a),
            human(b),
            rate(row.events, a),
            rate(row.events, b),
            ratio,
            paired_ratio.map_or("-".to_owned(), |p| format!("{p:.3}x")),
            spread.map_or("-".to_owned(), |(lo, hi)| format!("{lo:.2}..{hi:.2}")),
        ));
    }
    eprint!("{out}");
}
