//! Benchmarks without a database: decoding and upcasting, schema validation,
//! and the in-memory store. Each annals path runs beside its baseline in the
//! same run; the ratios are printed to stderr at the end.
//!
//! Run: `cargo bench --bench events`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{
    Event, EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent,
    RecordedEvent, SchemaRegistry,
};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

mod common;
use common::{
    print_summary, raw, run_group, scored, scored_v1, timed, Comparison, LeadEvent, LeadScored, Op,
    Target,
};

const N: usize = 10_000;
const SAMPLES: usize = 20;
/// Interleaved rounds per (annals, baseline) pair.
const ROUNDS: usize = 40;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
}

fn registry() -> Arc<SchemaRegistry> {
    let registry = Arc::new(SchemaRegistry::new());
    registry
        .register::<LeadEvent>()
        .expect("register LeadEvent");
    registry
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(N as u64));
}

/// `Event::decode` of every payload at `version`.
fn decode_op(payloads: &[Box<RawValue>], version: u32) -> Op<'_> {
    Box::new(move || {
        timed(|| {
            for p in payloads {
                black_box(LeadEvent::decode("lead.scored", version, black_box(p)).expect("decode"));
            }
        })
    })
}

/// Plain serde of every payload straight into the current type.
fn serde_op(payloads: &[Box<RawValue>]) -> Op<'_> {
    Box::new(move || {
        timed(|| {
            for p in payloads {
                black_box(serde_json::from_str::<LeadScored>(black_box(p).get()).expect("decode"));
            }
        })
    })
}

/// v1 → v2 upcast and current-version decoding against plain serde.
fn decode(c: &mut Criterion) {
    let v1: Vec<Box<RawValue>> = (0..N).map(|i| raw(&scored_v1(i))).collect();
    let v2: Vec<Box<RawValue>> = (0..N).map(|i| raw(&scored(i))).collect();
    // the two paths agree: the baseline decodes the same bytes into the same value
    for p in &v1 {
        let LeadEvent::Scored(a) = LeadEvent::decode("lead.scored", 1, p).expect("upcast") else {
            panic!("not a score")
        };
        let b: LeadScored = serde_json::from_str(p.get()).expect("plain decode");
        assert_eq!(a, b);
    }
    run_group(
        c,
        "decode_10k",
        configure,
        &[
            ("upcast_v1/annals", decode_op(&v1, 1)),
            ("upcast_v1/serde", serde_op(&v1)),
            ("current_v2/annals", decode_op(&v2, 2)),
            ("current_v2/serde", serde_op(&v2)),
        ],
        &[
            ("upcast_v1/annals", "upcast_v1/serde"),
            ("current_v2/annals", "current_v2/serde"),
        ],
        ROUNDS,
    );
}

/// Stored events of one version, as a store returns them (appended with
/// validation off, as older code would have written them).
fn stored_events(version: u32) -> Vec<RecordedEvent> {
    let store = InMemoryEventStore::with_registry(registry()).without_validation();
    let events: Vec<NewEvent> = (0..N)
        .map(|i| {
            let payload = if version == 1 {
                raw(&scored_v1(i))
            } else {
                raw(&scored(i))
            };
            NewEvent::new("lead.scored", version, payload, Metadata::new())
        })
        .collect();
    runtime().block_on(async {
        store
            .append("lead-1", ExpectedVersion::NoStream, events)
            .await
            .expect("append");
        store.read_stream("lead-1", ..).await.expect("read")
    })
}

/// `EventStoreExt::decode` of every stored event, or (`validated` false) what
/// it does minus the old-version validation. It consumes its input: the
/// events are cloned outside the timed part.
fn typed_op<'a>(
    store: &'a InMemoryEventStore,
    recorded: &'a [RecordedEvent],
    validated: bool,
) -> Op<'a> {
    Box::new(move || {
        let batch = recorded.to_vec();
        if validated {
            timed(|| {
                for r in batch {
                    black_box(store.decode::<LeadEvent>(r).expect("decode"));
                }
            })
        } else {
            timed(|| {
                for r in batch {
                    let e = LeadEvent::decode(&r.event_type, r.schema_version, &r.payload)
                        .expect("decode");
                    black_box(r.map(|_| e));
                }
            })
        }
    })
}

/// Schema validation on its own, and the typed read path with and without
/// the old-version validation.
fn validation(c: &mut Criterion) {
    let registry = registry();
    let values: Vec<Value> = (0..N)
        .map(|i| serde_json::to_value(scored_v1(i)).expect("to value"))
        .collect();
    let v1_text: Vec<Box<RawValue>> = (0..N).map(|i| raw(&scored_v1(i))).collect();
    let schema = registry.get("lead.scored", 1).expect("v1 schema");
    let store = InMemoryEventStore::with_registry(registry.clone());
    let recorded_v1 = stored_events(1);
    let recorded_v2 = stored_events(2);

    run_group(
        c,
        "validate_10k",
        configure,
        &[
            (
                "registry_validate",
                Box::new(|| {
                    timed(|| {
                        for v in &values {
                            registry
                                .validate("lead.scored", 1, black_box(v))
                                .expect("valid");
                        }
                    })
                }),
            ),
            // the compiled validator alone: validate without the registry lookup
            (
                "validator_only",
                Box::new(|| {
                    timed(|| {
                        for v in &values {
                            schema.validate(black_box(v)).expect("valid");
                        }
                    })
                }),
            ),
            // the other half of the old-version check: the payload parsed to a Value
            (
                "parse_to_value",
                Box::new(|| {
                    timed(|| {
                        for p in &v1_text {
                            black_box(
                                serde_json::from_str::<Value>(black_box(p).get()).expect("parse"),
                            );
                        }
                    })
                }),
            ),
            // plain decode of the same payloads, for scale
            (
                "serde_decode",
                Box::new(|| {
                    timed(|| {
                        for p in &v1_text {
                            black_box(
                                serde_json::from_str::<LeadScored>(black_box(p).get())
                                    .expect("decode"),
                            );
                        }
                    })
                }),
            ),
            (
                "typed_decode_v1/validated",
                typed_op(&store, &recorded_v1, true),
            ),
            (
                "typed_decode_v1/unvalidated",
                typed_op(&store, &recorded_v1, false),
            ),
            (
                "typed_decode_v2/annals",
                typed_op(&store, &recorded_v2, true),
            ),
            (
                "typed_decode_v2/direct",
                typed_op(&store, &recorded_v2, false),
            ),
        ],
        &[
            ("registry_validate", "serde_decode"),
            ("registry_validate", "validator_only"),
            ("parse_to_value", "serde_decode"),
            ("typed_decode_v1/validated", "typed_decode_v1/unvalidated"),
            ("typed_decode_v2/annals", "typed_decode_v2/direct"),
        ],
        ROUNDS,
    );
}

/// The baseline store: what an event store minimally does in memory: encode,
/// give an id, check the stream's version under a lock, keep the row.
#[derive(Default)]
struct NaiveStore {
    streams: Mutex<HashMap<String, Vec<NaiveRecord>>>,
}

struct NaiveRecord {
    id: Uuid,
    event_type: &'static str,
    schema_version: u32,
    payload: String,
    metadata: Metadata,
}

impl NaiveStore {
    fn append(&self, stream: &str, expected: u64, events: &[LeadEvent], metadata: &Metadata) {
        let encoded: Vec<NaiveRecord> = events
            .iter()
            .map(|e| NaiveRecord {
                id: Uuid::now_v7(),
                event_type: e.event_type(),
                schema_version: e.schema_version(),
                payload: match e {
                    LeadEvent::Created(p) => serde_json::to_string(p),
                    LeadEvent::Scored(p) => serde_json::to_string(p),
                }
                .expect("encode"),
                metadata: metadata.clone(),
            })
            .collect();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let stream = streams.entry(stream.to_owned()).or_default();
        assert_eq!(stream.len() as u64, expected, "version conflict");
        stream.extend(encoded);
    }

    fn read_scored(&self, stream: &str) -> Vec<(Uuid, u64, Metadata, LeadScored)> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams[stream]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                assert_eq!((r.event_type, r.schema_version), ("lead.scored", 2));
                let p = serde_json::from_str(&r.payload).expect("decode");
                (r.id, i as u64 + 1, r.metadata.clone(), p)
            })
            .collect()
    }
}

/// Appends and typed reads on the in-memory store against the naive store.
fn memory_store(c: &mut Criterion) {
    let rt = runtime();
    let registry = registry();
    let events: Vec<LeadEvent> = (0..N).map(|i| LeadEvent::Scored(scored(i))).collect();
    let meta = Metadata::new().with_user("bench");

    // N events on one stream, `per_call` per append, each expecting the
    // stream's exact version
    let annals = |per_call: usize, validated: bool| -> Op<'_> {
        let (rt, registry, events, meta) = (&rt, &registry, &events, &meta);
        Box::new(move || {
            let store = InMemoryEventStore::with_registry(registry.clone());
            let store = if validated {
                store
            } else {
                store.without_validation()
            };
            timed(|| {
                rt.block_on(async {
                    for (k, chunk) in events.chunks(per_call).enumerate() {
                        let expected = ExpectedVersion::from_current(Some((k * per_call) as u64));
                        black_box(
                            store
                                .append_events("lead-1", expected, chunk, meta)
                                .await
                                .expect("append"),
                        );
                    }
                })
            })
        })
    };
    let naive = |per_call: usize| -> Op<'_> {
        let (events, meta) = (&events, &meta);
        Box::new(move || {
            let store = NaiveStore::default();
            timed(|| {
                for (k, chunk) in events.chunks(per_call).enumerate() {
                    store.append("lead-1", (k * per_call) as u64, chunk, meta);
                }
            })
        })
    };
    run_group(
        c,
        "memory_append_10k",
        configure,
        &[
            ("1_per_call/annals_validated", annals(1, true)),
            ("1_per_call/annals_unvalidated", annals(1, false)),
            ("1_per_call/naive_baseline", naive(1)),
            ("100_per_call/annals_validated", annals(100, true)),
            ("100_per_call/annals_unvalidated", annals(100, false)),
            ("100_per_call/naive_baseline", naive(100)),
        ],
        &[
            ("1_per_call/annals_validated", "1_per_call/naive_baseline"),
            ("1_per_call/annals_unvalidated", "1_per_call/naive_baseline"),
            (
                "1_per_call/annals_validated",
                "1_per_call/annals_unvalidated",
            ),
            (
                "100_per_call/annals_validated",
                "100_per_call/naive_baseline",
            ),
            (
                "100_per_call/annals_unvalidated",
                "100_per_call/naive_baseline",
            ),
            (
                "100_per_call/annals_validated",
                "100_per_call/annals_unvalidated",
            ),
        ],
        ROUNDS,
    );

    // one 10,000-event stream in each store
    let store = InMemoryEventStore::with_registry(registry.clone());
    // the same stream in a store whose registry validates every read
    let validating = InMemoryEventStore::new();
    validating.registry().validate_reads(true);
    let naive_store = NaiveStore::default();
    rt.block_on(async {
        for (k, chunk) in events.chunks(100).enumerate() {
            let expected = ExpectedVersion::from_current(Some(k as u64 * 100));
            store
                .append_events("lead-1", expected, chunk, &meta)
                .await
                .expect("append");
            validating
                .append_events("lead-1", expected, chunk, &meta)
                .await
                .expect("append");
            naive_store.append("lead-1", k as u64 * 100, chunk, &meta);
        }
    });
    run_group(
        c,
        "memory_read_10k",
        configure,
        &[
            (
                "read_stream_as/annals",
                Box::new(|| {
                    timed(|| {
                        let events = rt
                            .block_on(store.read_stream_as::<LeadEvent>("lead-1", ..))
                            .expect("read");
                        assert_eq!(events.len(), N);
                        black_box(events);
                    })
                }),
            ),
            (
                "read_stream_as_validating/annals",
                Box::new(|| {
                    timed(|| {
                        let events = rt
                            .block_on(validating.read_stream_as::<LeadEvent>("lead-1", ..))
                            .expect("read");
                        assert_eq!(events.len(), N);
                        black_box(events);
                    })
                }),
            ),
            // untyped, to split the read from the decode
            (
                "read_stream_raw/annals",
                Box::new(|| {
                    timed(|| {
                        let events = rt.block_on(store.read_stream("lead-1", ..)).expect("read");
                        black_box(events);
                    })
                }),
            ),
            (
                "read_typed/naive_baseline",
                Box::new(|| {
                    timed(|| {
                        let events = naive_store.read_scored("lead-1");
                        assert_eq!(events.len(), N);
                        black_box(events);
                    })
                }),
            ),
        ],
        &[
            ("read_stream_as/annals", "read_typed/naive_baseline"),
            ("read_stream_as_validating/annals", "read_stream_as/annals"),
            ("read_stream_raw/annals", "read_typed/naive_baseline"),
        ],
        ROUNDS,
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    decode(&mut c);
    validation(&mut c);
    memory_store(&mut c);
    c.final_summary();

    let n = N as u64;
    let row = |label, annals, baseline, target| Comparison {
        label,
        annals,
        baseline,
        events: n,
        target,
    };
    print_summary(
        "events (no database)",
        SAMPLES,
        &[
            row(
                "decode 10k v1 via upcast vs serde into v2",
                "decode_10k/upcast_v1/annals",
                "decode_10k/upcast_v1/serde",
                Target::TimeAtMost(1.15),
            ),
            row(
                "decode 10k v2 via Event::decode vs serde",
                "decode_10k/current_v2/annals",
                "decode_10k/current_v2/serde",
                Target::TimeAtMost(1.15),
            ),
            row(
                "SchemaRegistry::validate 10k vs serde decode",
                "validate_10k/registry_validate",
                "validate_10k/serde_decode",
                Target::None,
            ),
            row(
                "SchemaRegistry::validate vs compiled validator",
                "validate_10k/registry_validate",
                "validate_10k/validator_only",
                Target::None,
            ),
            row(
                "parse payload to Value vs serde decode",
                "validate_10k/parse_to_value",
                "validate_10k/serde_decode",
                Target::None,
            ),
            row(
                "EventStoreExt::decode v1: validated vs not",
                "validate_10k/typed_decode_v1/validated",
                "validate_10k/typed_decode_v1/unvalidated",
                Target::None,
            ),
            row(
                "EventStoreExt::decode v2 vs Event::decode+map",
                "validate_10k/typed_decode_v2/annals",
                "validate_10k/typed_decode_v2/direct",
                Target::None,
            ),
            row(
                "mem append 10k 1/call: validated vs naive",
                "memory_append_10k/1_per_call/annals_validated",
                "memory_append_10k/1_per_call/naive_baseline",
                Target::None,
            ),
            row(
                "mem append 10k 1/call: unvalidated vs naive",
                "memory_append_10k/1_per_call/annals_unvalidated",
                "memory_append_10k/1_per_call/naive_baseline",
                Target::None,
            ),
            row(
                "mem append 10k 1/call: validated vs unvalidated",
                "memory_append_10k/1_per_call/annals_validated",
                "memory_append_10k/1_per_call/annals_unvalidated",
                Target::None,
            ),
            row(
                "mem append 10k 100/call: validated vs naive",
                "memory_append_10k/100_per_call/annals_validated",
                "memory_append_10k/100_per_call/naive_baseline",
                Target::None,
            ),
            row(
                "mem append 10k 100/call: unvalidated vs naive",
                "memory_append_10k/100_per_call/annals_unvalidated",
                "memory_append_10k/100_per_call/naive_baseline",
                Target::None,
            ),
            row(
                "mem append 10k 100/call: validated vs unvalidated",
                "memory_append_10k/100_per_call/annals_validated",
                "memory_append_10k/100_per_call/annals_unvalidated",
                Target::None,
            ),
            row(
                "mem read 10k typed: read_stream_as vs naive",
                "memory_read_10k/read_stream_as/annals",
                "memory_read_10k/read_typed/naive_baseline",
                Target::None,
            ),
            row(
                "mem read 10k typed, validating reads vs default",
                "memory_read_10k/read_stream_as_validating/annals",
                "memory_read_10k/read_stream_as/annals",
                Target::None,
            ),
            row(
                "mem read 10k: read_stream (raw) vs naive typed",
                "memory_read_10k/read_stream_raw/annals",
                "memory_read_10k/read_typed/naive_baseline",
                Target::None,
            ),
        ],
    );
}
