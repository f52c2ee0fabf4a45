//! The backend conformance suite: the semantics every [`EventStore`] must
//! have, written down once. A backend runs all of it with one call:
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use annals::InMemoryEventStore;
//! annals::testing::conformance::run(|validate| async move {
//!     let store = InMemoryEventStore::new();
//!     if validate { store } else { store.without_validation() }
//! })
//! .await;
//! # });
//! ```
//!
//! Each check panics with a message saying which rule broke.

use std::collections::HashSet;
use std::future::Future;

use serde_json::json;
use serde_json::value::to_raw_value;

use super::events::{Created, Scored, TestEvent};
use crate::event::DecodeError;
use crate::store::{Session, Versioned, Watch, WatchLog};
use crate::{Error, EventStore, EventStoreExt, ExpectedVersion, LogPosition, Metadata, NewEvent};

fn created(name: &str) -> TestEvent {
    TestEvent::Created(Created {
        name: name.to_owned(),
        email: None,
    })
}

fn scored(score: u8) -> TestEvent {
    TestEvent::Scored(Scored {
        score,
        confidence: 0.9,
        model: "m1".to_owned(),
    })
}

fn raw(event_type: &str, version: u32, payload: serde_json::Value) -> NewEvent {
    let payload = match to_raw_value(&payload) {
        Ok(p) => p,
        Err(e) => panic!("test payload does not serialize: {e}"),
    };
    NewEvent::new(event_type, version, payload, Metadata::new())
}

async fn must<T>(what: &str, fut: impl Future<Output = Result<T, Error>>) -> T {
    match fut.await {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

/// Reads the whole log after `after` until it holds at least `expected`
/// events. A backend may hold events back while an older transaction
/// anywhere on its server is still open (the Postgres snapshot horizon), so
/// visibility in the global log is eventual; this waits up to 30 s.
pub async fn read_log_settled<S: EventStore>(
    store: &S,
    after: LogPosition,
    expected: usize,
) -> Vec<crate::RecordedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let all = must("read all", store.read_log(after, 100_000)).await;
        if all.len() >= expected || std::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs every check. `make(validate)` returns a fresh, empty store that
/// validates appended payloads when `validate` is true.
pub async fn run<S, F, Fut>(mut make: F)
where
    S: WatchLog + Clone + 'static,
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = S>,
{
    append_and_read(make(true).await).await;
    events_by_position_and_backlog(make(true).await).await;
    watchers_wake_on_append(make(true).await).await;
    expected_versions(make(true).await).await;
    empty_append(make(true).await).await;
    batches_are_atomic(make(true).await).await;
    validation(make(true).await).await;
    read_stream_ranges(make(true).await).await;
    fold_in_pages(make(true).await).await;
    read_all_order_and_paging(make(true).await).await;
    upcasting(make(true).await).await;
    bad_rows(make(false).await).await;
    input_limits(make(false).await).await;
    input_limits_before_validation(make(true).await).await;
    concurrent_writers(make(true).await).await;
    session(make(true).await).await;
    tenants_are_isolated(make(true).await).await;
    every_tenant_reads_the_whole_log(make(true).await).await;
}

async fn events_by_position_and_backlog<S: EventStore>(store: S) {
    let empty = must("backlog of an empty log", store.backlog(LogPosition::START)).await;
    assert_eq!(empty.events, 0, "an empty log has no backlog");
    assert_eq!(empty.oldest_recorded_at, None);
    let a = must(
        "append",
        store.append_events(
            "pos-a",
            ExpectedVersion::NoStream,
            &[created("A"), scored(1)],
            &Metadata::new(),
        ),
    )
    .await;
    let b = must(
        "append",
        store.append_events(
            "pos-b",
            ExpectedVersion::NoStream,
            &[created("B")],
            &Metadata::new(),
        ),
    )
    .await;
    for e in a.events.iter().chain(&b.events) {
        let read = must("read an event by position", store.read_event(e.position())).await;
        let read = read.unwrap_or_else(|| panic!("read_event({}) found nothing", e.position()));
        assert_eq!(
            read.event_id, e.event_id,
            "read_event returns the event at that position"
        );
        assert_eq!(read.log_position, e.log_position);
    }
    let beyond = b.events[0].position() + 1_000;
    assert!(
        must("read a missing position", store.read_event(beyond))
            .await
            .is_none(),
        "read_event of a position with no event is None"
    );
    let all = read_log_settled(&store, LogPosition::START, 3).await;
    assert_eq!(all.len(), 3);
    let whole = must("backlog from the start", store.backlog(LogPosition::START)).await;
    assert_eq!(whole.events, 3, "the backlog from the start is every event");
    assert_eq!(
        whole.oldest_recorded_at,
        all.iter().map(|e| e.recorded_at).min(),
        "the backlog's oldest event"
    );
    let rest = must(
        "backlog after the first",
        store.backlog(all[0].log_position),
    )
    .await;
    assert_eq!(rest.events, 2, "the backlog after a checkpoint excludes it");
    let none = must("backlog at the end", store.backlog(all[2].log_position)).await;
    assert_eq!(none.events, 0, "a reader at the end has no backlog");
}

async fn watchers_wake_on_append<S: WatchLog + Clone + 'static>(store: S) {
    let mut watcher = must("watch the log", store.watch()).await;
    // a notification of appends made just before (by an earlier check's
    // store on the same database, say) may still arrive: wake-ups are
    // hints; but once they are told, the watcher stays quiet
    let mut quiet = false;
    for _ in 0..20 {
        if !watcher.wait(std::time::Duration::from_millis(50)).await {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "a watcher is not woken while nothing is appended");
    let writer = store.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        must(
            "append",
            writer.append_events(
                "watched",
                ExpectedVersion::Any,
                &[created("W")],
                &Metadata::new(),
            ),
        )
        .await;
    });
    let started = std::time::Instant::now();
    assert!(
        watcher.wait(std::time::Duration::from_secs(20)).await,
        "an append wakes the watcher"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the watcher woke on the append, not on its timeout"
    );
    if let Err(e) = append.await {
        panic!("appending task failed: {e}");
    }
}

async fn append_and_read<S: EventStore>(store: S) {
    let meta = Metadata::new()
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_causation_id(uuid::Uuid::now_v7())
        .with_user("ana")
        .with("tenant", "clinic-7");
    let result = must(
        "append to a new stream",
        store.append_events(
            "lead-1",
            ExpectedVersion::NoStream,
            &[created("Ana"), scored(80)],
            &meta,
        ),
    )
    .await;
    assert_eq!(result.version, 2, "the stream's version after two events");
    assert_eq!(result.events.len(), 2, "append returns the appended events");
    assert_eq!(
        result.events[0].stream_version, 1,
        "stream versions start at 1"
    );
    assert_eq!(
        result.events[0].log_position.transaction_id, result.events[1].log_position.transaction_id,
        "events of one append share a transaction"
    );

    let read = must("read the stream", store.read_stream("lead-1", ..)).await;
    assert_eq!(read.len(), 2);
    for (a, r) in result.events.iter().zip(&read) {
        assert_eq!(a.event_id, r.event_id, "event ids are kept");
        assert_eq!(
            a.log_position, r.log_position,
            "append reports the stored position"
        );
        assert_eq!(a.stream_version, r.stream_version);
        assert_eq!(r.stream_id, "lead-1");
        assert_eq!(r.metadata, meta, "metadata round-trips");
    }
    assert_eq!(read[0].event_type, "test.created");
    assert_eq!(read[1].event_type, "test.scored");
    assert_eq!(read[1].schema_version, 3);
    assert!(read[0].log_position < read[1].log_position);

    let typed = must(
        "read typed",
        store.read_stream_as::<TestEvent>("lead-1", ..),
    )
    .await;
    assert_eq!(typed[0].payload, created("Ana"));
    assert_eq!(typed[1].payload, scored(80));
    assert_eq!(
        must("stream version", store.stream_version("lead-1")).await,
        Some(2)
    );
    assert_eq!(
        must("stream version", store.stream_version("nobody")).await,
        None
    );
}

async fn expected_versions<S: EventStore>(store: S) {
    let m = Metadata::new();
    must(
        "Any on a new stream",
        store.append_events("s", ExpectedVersion::Any, &[created("a")], &m),
    )
    .await;
    must(
        "Any on an existing stream",
        store.append_events("s", ExpectedVersion::Any, &[scored(1)], &m),
    )
    .await;
    let conflict = |r: Result<_, Error>| match r {
        Err(Error::Conflict(c)) => c,
        Err(e) => panic!("expected a version conflict, got: {e}"),
        Ok(_) => panic!("expected a version conflict, the append succeeded"),
    };
    let c = conflict(
        store
            .append_events("s", ExpectedVersion::NoStream, &[scored(2)], &m)
            .await,
    );
    assert_eq!(c.expected, ExpectedVersion::NoStream);
    assert_eq!(c.actual, Some(2));
    assert_eq!(c.stream_id, "s");
    let c = conflict(
        store
            .append_events("s", ExpectedVersion::Exact(1), &[scored(2)], &m)
            .await,
    );
    assert_eq!((c.expected, c.actual), (ExpectedVersion::Exact(1), Some(2)));
    let c = conflict(
        store
            .append_events("new", ExpectedVersion::Exact(3), &[scored(2)], &m)
            .await,
    );
    assert_eq!(c.actual, None, "a missing stream reports no version");
    let ok = must(
        "Exact on the right version",
        store.append_events("s", ExpectedVersion::Exact(2), &[scored(3)], &m),
    )
    .await;
    assert_eq!(ok.version, 3);
    assert_eq!(must("read", store.read_stream("s", ..)).await.len(), 3);
    assert!(must("read new", store.read_stream("new", ..))
        .await
        .is_empty());
}

async fn empty_append<S: EventStore>(store: S) {
    let r = must(
        "empty append to a new stream",
        store.append("e", ExpectedVersion::NoStream, Vec::new()),
    )
    .await;
    assert_eq!(r.version, 0);
    assert!(r.events.is_empty());
    assert_eq!(must("version", store.stream_version("e")).await, None);
    let err = store
        .append("e", ExpectedVersion::Exact(4), Vec::new())
        .await;
    assert!(
        matches!(err, Err(Error::Conflict(_))),
        "an empty append still checks the expected version"
    );
}

async fn batches_are_atomic<S: EventStore>(store: S) {
    let m = Metadata::new();
    must(
        "seed",
        store.append_events("b", ExpectedVersion::NoStream, &[created("x")], &m),
    )
    .await;
    let before = read_log_settled(&store, LogPosition::START, 1).await.len();
    let r = store
        .append(
            "b",
            ExpectedVersion::Exact(1),
            vec![
                raw("test.note", 1, json!("ok")),
                raw(
                    "test.scored",
                    3,
                    json!({"score": 250, "confidence": 1.0, "model": "m"}),
                ),
                raw("test.note", 1, json!("ok")),
            ],
        )
        .await;
    assert!(
        matches!(r, Err(Error::SchemaViolation(_))),
        "a batch with one invalid event is refused"
    );
    let r = store
        .append_events("b", ExpectedVersion::Exact(7), &[scored(1), scored(2)], &m)
        .await;
    assert!(matches!(r, Err(Error::Conflict(_))));
    // a refused batch writes nothing: append a marker and check that the
    // log holds exactly the seed and the marker
    must(
        "marker",
        store.append_events("b2", ExpectedVersion::NoStream, &[created("marker")], &m),
    )
    .await;
    let after = read_log_settled(&store, LogPosition::START, before + 1).await;
    assert_eq!(before + 1, after.len(), "a refused batch writes nothing");
    assert_eq!(must("version", store.stream_version("b")).await, Some(1));
}

async fn validation<S: EventStore>(store: S) {
    assert!(store.validates_on_append());
    store
        .registry()
        .register::<TestEvent>()
        .unwrap_or_else(|e| panic!("register: {e}"));
    let r = store
        .append(
            "v",
            ExpectedVersion::Any,
            vec![raw(
                "test.scored",
                3,
                json!({"score": 101, "confidence": 0.1, "model": "m"}),
            )],
        )
        .await;
    match r {
        Err(Error::SchemaViolation(v)) => {
            assert_eq!(v.event_type, "test.scored");
            assert_eq!(v.version, 3);
            assert_eq!(
                v.pointer(),
                "/score",
                "the violation names the failing field"
            );
        }
        other => panic!("expected a schema violation, got {other:?}"),
    }
    let r = store
        .append(
            "v",
            ExpectedVersion::Any,
            vec![raw("test.unknown", 1, json!({}))],
        )
        .await;
    assert!(
        matches!(r, Err(Error::Unregistered { ref event_type, version: 1 }) if event_type == "test.unknown"),
        "an unregistered type is refused while validating: {r:?}"
    );
    let r = store
        .append(
            "v",
            ExpectedVersion::Any,
            vec![raw("test.scored", 9, json!({}))],
        )
        .await;
    assert!(matches!(r, Err(Error::Unregistered { version: 9, .. })));
    // an old version is valid to append when its payload matches its schema
    must(
        "append a v2 payload",
        store.append(
            "v",
            ExpectedVersion::Any,
            vec![raw(
                "test.scored",
                2,
                json!({"score": 5, "confidence": 0.2}),
            )],
        ),
    )
    .await;
}

async fn read_stream_ranges<S: EventStore>(store: S) {
    let events: Vec<TestEvent> = (0..25).map(|i| scored(i as u8)).collect();
    must(
        "append 25",
        store.append_events("r", ExpectedVersion::NoStream, &events, &Metadata::new()),
    )
    .await;
    let page = must("10..15", store.read_stream("r", 10..15)).await;
    let versions: Vec<u64> = page.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![10, 11, 12, 13, 14]);
    let page = must("10..=11", store.read_stream("r", 10..=11)).await;
    assert_eq!(page.len(), 2, "an inclusive end");
    let from0 = must("from 0", store.read_stream("r", 0..)).await;
    assert_eq!(
        from0.len(),
        25,
        "a range from version 0 reads from the start"
    );
    let head = must("..4", store.read_stream("r", ..4)).await;
    assert_eq!(head.len(), 3, "an exclusive end from the start");
    assert!(must("past the end", store.read_stream("r", 26..36))
        .await
        .is_empty());
    assert!(must("an empty range", store.read_stream("r", 5..5))
        .await
        .is_empty());
    let full = must("full from 10", store.read_stream("r", 10..)).await;
    // the payload fold sees what the full read sees, from the same version
    let mut payloads = Vec::new();
    let folded = must(
        "payloads from 10",
        store.fold_stream_payloads("r", 10.., |p| {
            payloads.push((
                p.stream_version,
                p.event_type.to_owned(),
                p.schema_version,
                p.payload.replace(' ', ""),
            ));
            Ok(())
        }),
    )
    .await;
    assert_eq!(folded, 16);
    assert_eq!(payloads.len(), 16);
    for (p, f) in payloads.iter().zip(&full) {
        assert_eq!(
            p,
            &(
                f.stream_version,
                f.event_type.clone(),
                f.schema_version,
                f.payload.get().replace(' ', "")
            )
        );
    }
    let bounded = must(
        "payloads 3..=5",
        store.fold_stream_payloads("r", 3..=5, |_| Ok(())),
    )
    .await;
    assert_eq!(bounded, 3, "a payload fold honours the range's end");
    assert_eq!(
        must(
            "no stream",
            store.fold_stream_payloads("nobody", .., |_| Ok(()))
        )
        .await,
        0
    );
    let typed = must(
        "typed from 20",
        store.read_stream_as::<TestEvent>("r", 20..),
    )
    .await;
    assert_eq!(typed.len(), 6);
    assert_eq!(typed[0].payload, scored(19));

    // read_stream_with: the same envelopes, each payload as `decode` made it
    let with = must(
        "with from 10",
        store.read_stream_with("r", 10.., |p| {
            Ok((
                p.stream_version,
                p.event_type.to_owned(),
                p.schema_version,
                p.payload.replace(' ', ""),
            ))
        }),
    )
    .await;
    assert_eq!(with.len(), full.len());
    for (w, f) in with.iter().zip(&full) {
        assert_eq!(
            (
                w.event_id,
                &w.stream_id,
                w.stream_version,
                w.log_position,
                &w.event_type,
                w.schema_version,
                &w.metadata,
                w.recorded_at
            ),
            (
                f.event_id,
                &f.stream_id,
                f.stream_version,
                f.log_position,
                &f.event_type,
                f.schema_version,
                &f.metadata,
                f.recorded_at
            )
        );
        assert_eq!(
            w.payload,
            (
                f.stream_version,
                f.event_type.clone(),
                f.schema_version,
                f.payload.get().replace(' ', "")
            )
        );
    }
    let from0 = must("with from 0", store.read_stream_with("r", 0.., |_| Ok(()))).await;
    assert_eq!(from0.len(), 25, "from version 0 reads from the start");
    let typed = must(
        "typed payloads 24..",
        store.read_stream_payloads_as::<TestEvent>("r", 24..),
    )
    .await;
    assert_eq!(
        typed,
        vec![
            Versioned {
                stream_version: 24,
                event: scored(23)
            },
            Versioned {
                stream_version: 25,
                event: scored(24)
            }
        ]
    );
    // an error from `decode` stops the read, naming the event's position
    let refused = store
        .read_stream_with("r", .., |p| match p.stream_version {
            12 => Err(Error::CorruptedRow {
                position: None,
                message: "refused".to_owned(),
            }),
            _ => Ok(()),
        })
        .await;
    match refused {
        Err(Error::CorruptedRow { position, message }) => {
            assert_eq!(
                position,
                Some(full[2].log_position.position),
                "version 12's position"
            );
            assert_eq!(message, "refused");
        }
        other => panic!("expected decode's error, got {other:?}"),
    }
}

/// `fold_stream_as` reads a stream a page at a time and folds every event
/// of the range once, in version order, across page boundaries.
async fn fold_in_pages<S: EventStore>(store: S) {
    const N: u64 = 2 * crate::store::STREAM_PAGE + 345;
    let m = Metadata::new();
    for chunk in 0..N.div_ceil(500) {
        let events: Vec<TestEvent> = (chunk * 500..((chunk + 1) * 500).min(N))
            .map(|i| created(&i.to_string()))
            .collect();
        must(
            "append a chunk",
            store.append_events(
                "fold-pages",
                ExpectedVersion::from_current((chunk > 0).then_some(chunk * 500)),
                &events,
                &m,
            ),
        )
        .await;
    }
    let versions = |range: (std::ops::Bound<u64>, std::ops::Bound<u64>)| {
        store.fold_stream_as::<TestEvent, _, _>("fold-pages", range, Vec::new(), |mut v, e| {
            v.push(e.stream_version);
            Ok(v)
        })
    };
    use std::ops::Bound::{Included, Unbounded};
    let all = must("fold the whole stream", versions((Unbounded, Unbounded))).await;
    assert_eq!(
        all,
        (1..=N).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let middle = must("fold a range", versions((Included(990), Included(2010)))).await;
    assert_eq!(middle, (990..=2010).collect::<Vec<_>>());
    let tail = must("fold past the end", versions((Included(N - 5), Unbounded))).await;
    assert_eq!(tail, (N - 5..=N).collect::<Vec<_>>());
    let none = must(
        "fold a missing stream",
        store.fold_stream_as::<TestEvent, _, _>("fold-none", .., 7u32, |n, _| Ok(n + 1)),
    )
    .await;
    assert_eq!(none, 7, "nothing folded: the initial value");
    let stopped = store
        .fold_stream_as::<TestEvent, _, _>("fold-pages", .., 0u64, |n, e| {
            if e.stream_version == 1_500 {
                Err(Error::backend("folding", "stop here"))
            } else {
                Ok(n + 1)
            }
        })
        .await;
    match stopped {
        Err(e) => assert!(e.to_string().contains("while folding"), "{e}"),
        Ok(n) => panic!("an error from f stops the fold, but it returned {n}"),
    }
}

async fn read_all_order_and_paging<S: EventStore>(store: S) {
    let m = Metadata::new();
    for i in 0..10u8 {
        let stream = format!("p-{}", i % 3);
        must(
            "append",
            store.append_events(&stream, ExpectedVersion::Any, &[scored(i), scored(i)], &m),
        )
        .await;
    }
    let all = read_log_settled(&store, LogPosition::START, 20).await;
    assert_eq!(all.len(), 20);
    for w in all.windows(2) {
        assert!(
            w[0].log_position < w[1].log_position,
            "the log is in (transaction, position) order"
        );
    }
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 20, "event ids are unique");
    let mut after = LogPosition::START;
    let mut paged = Vec::new();
    loop {
        let page = must("page", store.read_log(after, 3)).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3, "read_log honours its limit");
        after = page[page.len() - 1].log_position;
        paged.extend(page);
    }
    let a: Vec<_> = all.iter().map(|e| e.event_id).collect();
    let b: Vec<_> = paged.iter().map(|e| e.event_id).collect();
    assert_eq!(
        a, b,
        "paging by checkpoint sees every event exactly once, in order"
    );
    let tail = must("after the last", store.read_log(after, 10)).await;
    assert!(tail.is_empty());
}

async fn upcasting<S: EventStore>(store: S) {
    store
        .registry()
        .register::<TestEvent>()
        .unwrap_or_else(|e| panic!("register: {e}"));
    must(
        "append old versions",
        store.append(
            "u",
            ExpectedVersion::NoStream,
            vec![
                raw("test.scored", 1, json!({"points": 70})),
                raw("test.scored", 2, json!({"score": 60, "confidence": 0.7})),
                raw(
                    "test.scored",
                    3,
                    json!({"score": 50, "confidence": 0.6, "model": "m2"}),
                ),
            ],
        ),
    )
    .await;
    let typed = must("read upcast", store.read_stream_as::<TestEvent>("u", ..)).await;
    let scores: Vec<TestEvent> = typed.into_iter().map(|e| e.payload).collect();
    assert_eq!(
        scores,
        vec![
            TestEvent::Scored(Scored {
                score: 70,
                confidence: 0.5,
                model: "unknown".into()
            }),
            TestEvent::Scored(Scored {
                score: 60,
                confidence: 0.7,
                model: "unknown".into()
            }),
            TestEvent::Scored(Scored {
                score: 50,
                confidence: 0.6,
                model: "m2".into()
            }),
        ],
        "v1 (JSON upcaster) and v2 (From) reach v3"
    );
}

/// Asserts that `r` is the typed [`Error::InvalidInput`] for `field`, whose
/// message holds every one of `says` and does not echo a long value.
fn invalid<T: std::fmt::Debug>(what: &str, r: Result<T, Error>, field: &str, says: &[&str]) {
    match r {
        Err(Error::InvalidInput(e)) => {
            assert_eq!(e.field, field, "{what}: the error names the field");
            let text = e.to_string();
            for s in says {
                assert!(text.contains(s), "{what}: `{text}` should say `{s}`");
            }
            assert!(
                text.len() < 400,
                "{what}: the error must not echo the value: {text}"
            );
        }
        other => panic!("{what}: expected InvalidInput for the {field}, got {other:?}"),
    }
}

/// The documented input limits (`annals::store::limits`), identical on
/// every backend: refused with [`Error::InvalidInput`] before anything is
/// written; values at the limits are stored.
async fn input_limits<S: EventStore>(store: S) {
    use crate::store::limits::{MAX_EVENT_TYPE_BYTES, MAX_JSON_DEPTH, MAX_STREAM_ID_BYTES};
    let note = || raw("test.note", 1, json!("ok"));
    let long_id = "s".repeat(MAX_STREAM_ID_BYTES + 1);
    let bad_ids: [(&str, &str, &[&str]); 3] = [
        ("empty", "", &["stream id", "empty"]),
        ("NUL", "lead\u{0}1", &["stream id", "NUL"]),
        ("too long", &long_id, &["stream id", "1025 bytes", "1024"]),
    ];
    for (what, id, says) in bad_ids {
        invalid(
            &format!("append to a stream id that is {what}"),
            store.append(id, ExpectedVersion::Any, vec![note()]).await,
            "stream id",
            says,
        );
        invalid(
            &format!("empty append to a stream id that is {what}"),
            store.append(id, ExpectedVersion::Any, Vec::new()).await,
            "stream id",
            says,
        );
        invalid(
            &format!("read of a stream id that is {what}"),
            store.read_stream(id, ..).await,
            "stream id",
            says,
        );
        invalid(
            &format!("fold of a stream id that is {what}"),
            store.fold_stream_payloads(id, .., |_| Ok(())).await,
            "stream id",
            says,
        );
        invalid(
            &format!("version of a stream id that is {what}"),
            store.stream_version(id).await,
            "stream id",
            says,
        );
        let mut session = must("session", store.session()).await;
        invalid(
            &format!("append on a session to a stream id that is {what}"),
            session.append(id, ExpectedVersion::Any, vec![note()]).await,
            "stream id",
            says,
        );
        invalid(
            &format!("fold on a session of a stream id that is {what}"),
            session.fold_stream_payloads(id, .., |_| Ok(())).await,
            "stream id",
            says,
        );
    }
    // the longest stream id is stored and read back
    let longest = "s".repeat(MAX_STREAM_ID_BYTES);
    must(
        "append to the longest stream id",
        store.append(&longest, ExpectedVersion::NoStream, vec![note()]),
    )
    .await;
    let read = must(
        "read the longest stream id",
        store.read_stream(&longest, ..),
    )
    .await;
    assert_eq!(read.len(), 1);

    let long_type = "t".repeat(MAX_EVENT_TYPE_BYTES + 1);
    let bad_types: [(&str, &str, &[&str]); 3] = [
        ("empty", "", &["event type", "empty"]),
        ("NUL", "test.\u{0}note", &["event type", "NUL"]),
        ("too long", &long_type, &["event type", "256 bytes", "255"]),
    ];
    for (what, t, says) in bad_types {
        // the bad event is second: a batch is refused as a whole
        invalid(
            &format!("append of an event type that is {what}"),
            store
                .append(
                    "types",
                    ExpectedVersion::Any,
                    vec![note(), raw(t, 1, json!({}))],
                )
                .await,
            "event type",
            says,
        );
    }
    let longest_type = "t".repeat(MAX_EVENT_TYPE_BYTES);
    must(
        "append of the longest event type",
        store.append(
            "types-ok",
            ExpectedVersion::NoStream,
            vec![raw(&longest_type, 1, json!({}))],
        ),
    )
    .await;

    // NUL in a payload: valid JSON, but jsonb cannot hold it
    for (what, payload) in [
        ("a string", json!({"name": "a\u{0}b"})),
        ("a key", json!({"na\u{0}me": 1})),
        ("a nested string", json!({"tags": [["x", "\u{0}"]]})),
    ] {
        invalid(
            &format!("a payload with NUL in {what}"),
            store
                .append(
                    "nul",
                    ExpectedVersion::Any,
                    vec![raw("test.note", 1, payload)],
                )
                .await,
            "payload",
            &["NUL", "jsonb"],
        );
    }
    // a backslash followed by `u0000` is not NUL: stored and read back as is
    let text = json!({"path": "C:\\u0000", "bracket": "[[[{"});
    must(
        "append a payload with a backslash before u0000",
        store.append(
            "not-nul",
            ExpectedVersion::NoStream,
            vec![raw("test.note", 1, text.clone())],
        ),
    )
    .await;
    let read = must("read it back", store.read_stream("not-nul", ..)).await;
    let back: serde_json::Value = serde_json::from_str(read[0].payload.get())
        .unwrap_or_else(|e| panic!("stored payload is JSON: {e}"));
    assert_eq!(back, text, "the payload is stored faithfully");

    // deep JSON
    let nest = |levels: usize| {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    };
    invalid(
        "a payload nested too deeply",
        store
            .append(
                "deep",
                ExpectedVersion::Any,
                vec![raw("test.note", 1, nest(MAX_JSON_DEPTH + 72))],
            )
            .await,
        "payload",
        &["nested too deeply", "128"],
    );
    must(
        "append a payload nested exactly as deep as the limit",
        store.append(
            "deepest",
            ExpectedVersion::NoStream,
            vec![raw("test.note", 1, nest(MAX_JSON_DEPTH))],
        ),
    )
    .await;

    // metadata: NUL, depth
    let mut nul_user = note();
    nul_user.metadata.user = Some("ana\u{0}".into());
    invalid(
        "metadata with a NUL user",
        store
            .append("meta", ExpectedVersion::Any, vec![nul_user])
            .await,
        "metadata",
        &["NUL"],
    );
    let mut deep_meta = note();
    deep_meta
        .metadata
        .extra
        .insert("deep".into(), nest(MAX_JSON_DEPTH + 72));
    invalid(
        "metadata nested too deeply",
        store
            .append("meta", ExpectedVersion::Any, vec![deep_meta])
            .await,
        "metadata",
        &["nested too deeply"],
    );

    // nothing refused was written
    for stream in ["types", "nul", "deep", "meta"] {
        assert_eq!(
            must("version", store.stream_version(stream)).await,
            None,
            "a refused append writes nothing (stream `{stream}`)"
        );
    }
}

/// The limits are checked before schema validation, the same way on every
/// backend.
async fn input_limits_before_validation<S: EventStore>(store: S) {
    assert!(store.validates_on_append());
    invalid(
        "a NUL event type while validating",
        store
            .append("v", ExpectedVersion::Any, vec![raw("\u{0}", 1, json!({}))])
            .await,
        "event type",
        &["NUL"],
    );
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    invalid(
        "a deep payload while validating",
        store
            .append("v", ExpectedVersion::Any, vec![raw("test.note", 1, deep)])
            .await,
        "payload",
        &["nested too deeply"],
    );
    invalid(
        "a NUL payload while validating",
        store
            .append(
                "v",
                ExpectedVersion::Any,
                vec![raw("test.note", 1, json!("\u{0}"))],
            )
            .await,
        "payload",
        &["NUL"],
    );
}

async fn bad_rows<S: EventStore>(store: S) {
    assert!(!store.validates_on_append());
    let m = Metadata::new();
    must(
        "append good events elsewhere",
        store.append_events("good", ExpectedVersion::NoStream, &[created("ok")], &m),
    )
    .await;
    let cases: Vec<(&str, NewEvent)> = vec![
        ("unknown", raw("test.nope", 1, json!({}))),
        ("too-new", raw("test.scored", 4, json!({}))),
        ("too-old", raw("test.created", 0, json!({}))),
        (
            "invalid-old",
            raw(
                "test.scored",
                2,
                json!({"score": "high", "confidence": 0.1}),
            ),
        ),
        (
            "bad-current",
            raw("test.scored", 3, json!({"score": 1, "confidence": 0.1})),
        ),
        (
            "upcast-fails",
            raw("test.scored", 1, json!({"no_points": 1})),
        ),
    ];
    for (stream, event) in cases {
        // a good event first: the bad one is version 2, not the first row
        must(
            "append a good event before the bad row",
            store.append_events(stream, ExpectedVersion::NoStream, &[created("ok")], &m),
        )
        .await;
        let appended = must(
            "append a bad row",
            store.append(stream, ExpectedVersion::Exact(1), vec![event]),
        )
        .await;
        let position = appended.events[0].log_position.position;
        // the lean read (which need not fetch positions) names the same
        // event as the full one
        match store.read_stream_payloads_as::<TestEvent>(stream, ..).await {
            Err(Error::Decode {
                position: p,
                stream_id,
                stream_version,
                ..
            }) => assert_eq!(
                (p, stream_id.as_str(), stream_version),
                (Some(position), stream, 2),
                "{stream}: the lean read's error names the event"
            ),
            other => panic!("{stream}: lean read: expected a decode error, got {other:?}"),
        }
        let err = match store.read_stream_as::<TestEvent>(stream, ..).await {
            Err(Error::Decode {
                position: p,
                source,
                stream_id,
                ..
            }) => {
                assert_eq!(
                    p,
                    Some(position),
                    "{stream}: the error names the event's position"
                );
                assert_eq!(stream_id, stream);
                source
            }
            other => panic!("{stream}: expected a decode error, got {other:?}"),
        };
        match (stream, &err) {
            ("unknown", DecodeError::UnknownEventType { event_type, known }) => {
                assert_eq!(event_type, "test.nope");
                assert!(known.contains(&"test.created"));
            }
            (
                "too-new",
                DecodeError::VersionTooNew {
                    version: 4,
                    current: 3,
                    ..
                },
            ) => {}
            (
                "too-old",
                DecodeError::VersionTooOld {
                    version: 0,
                    oldest: 1,
                    ..
                },
            ) => {}
            ("invalid-old", DecodeError::SchemaInvalid(v)) => assert_eq!(v.pointer(), "/score"),
            ("bad-current", DecodeError::Deserialize { version: 3, .. }) => {}
            (
                "upcast-fails",
                DecodeError::Upcast {
                    from_version: 1, ..
                },
            ) => {}
            _ => panic!("{stream}: wrong decode error: {err}"),
        }
        let message = err.to_string();
        assert!(!message.is_empty());
    }
    let good = must(
        "other streams still read",
        store.read_stream_as::<TestEvent>("good", ..),
    )
    .await;
    assert_eq!(good.len(), 1);

    // a current-version payload that serde accepts and only the schema
    // refuses (a score above the schema's maximum of 100): read as it is by
    // default, refused when the registry validates reads
    must(
        "append a row only the schema refuses",
        store.append(
            "schema-only",
            ExpectedVersion::NoStream,
            vec![raw(
                "test.scored",
                3,
                json!({"score": 200, "confidence": 0.1, "model": "m"}),
            )],
        ),
    )
    .await;
    let read = must(
        "read a row only the schema refuses",
        store.read_stream_as::<TestEvent>("schema-only", ..),
    )
    .await;
    assert!(
        matches!(&read[0].payload, TestEvent::Scored(s) if s.score == 200),
        "current versions are not validated on read by default"
    );
    store.registry().validate_reads(true);
    let refused = store.read_stream_as::<TestEvent>("schema-only", ..).await;
    store.registry().validate_reads(false);
    match refused {
        Err(Error::Decode {
            source: DecodeError::SchemaInvalid(v),
            stream_version: 1,
            ..
        }) => assert_eq!(v.pointer(), "/score"),
        other => panic!("a validating read refuses the row: got {other:?}"),
    }
}

async fn concurrent_writers<S: EventStore + Clone + 'static>(store: S) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 5;
    let mut wins = vec![0usize; ROUNDS as usize];
    for round in 0..ROUNDS {
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            let expected = if round == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(round)
            };
            handles.push(tokio::spawn(async move {
                store
                    .append_events("hot", expected, &[scored(w as u8)], &Metadata::new())
                    .await
            }));
        }
        for h in handles {
            match h.await {
                Ok(Ok(r)) => {
                    assert_eq!(r.version, round + 1);
                    wins[round as usize] += 1;
                }
                Ok(Err(Error::Conflict(c))) => {
                    assert_eq!(
                        c.actual,
                        Some(round + 1),
                        "the loser sees the winner's version"
                    )
                }
                Ok(Err(e)) => {
                    panic!("a concurrent writer failed with something else than a conflict: {e}")
                }
                Err(e) => panic!("writer task panicked: {e}"),
            }
        }
    }
    assert_eq!(
        wins,
        vec![1; ROUNDS as usize],
        "exactly one winner per version"
    );
    let versions: Vec<u64> = must("read", store.read_stream("hot", ..))
        .await
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(
        versions,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
}

/// A session: a fold and an append on one connection, as a command runs
/// them. The fold sees the whole stream in version order; the append
/// checks its expected version (a stale one is the typed conflict and
/// writes nothing); a session stays usable after a conflict.
async fn session<S: EventStore>(store: S) {
    let notes = |n: usize| {
        let notes: Vec<TestEvent> = (0..n)
            .map(|i| TestEvent::Note(format!("note {i}")))
            .collect();
        store
            .encode_events(&notes, &Metadata::new())
            .unwrap_or_else(|e| panic!("encode the notes: {e}"))
    };
    let mut session = must("a session", store.session()).await;
    let folded = must(
        "fold a new stream",
        session.fold_stream_payloads("notes-1", .., |_| Ok(())),
    )
    .await;
    assert_eq!(folded, 0, "a new stream folds nothing");
    let result = must(
        "append on the session",
        session.append("notes-1", ExpectedVersion::NoStream, notes(2)),
    )
    .await;
    assert_eq!(result.version, 2);
    assert_eq!(result.events.len(), 2);

    let mut seen = Vec::new();
    let folded = must(
        "fold a stream at version 2",
        session.fold_stream_payloads("notes-1", .., |p| {
            seen.push((p.stream_version, p.event_type.to_owned()));
            Ok(())
        }),
    )
    .await;
    assert_eq!(folded, 2, "the whole stream is folded");
    assert_eq!(
        seen,
        vec![(1, "test.note".to_owned()), (2, "test.note".to_owned())],
        "in version order"
    );
    match session
        .append("notes-1", ExpectedVersion::Exact(1), notes(1))
        .await
    {
        Err(Error::Conflict(c)) => {
            assert_eq!(c.actual, Some(2), "the conflict names the stream's version")
        }
        other => panic!("an append at a stale version: expected a conflict, got {other:?}"),
    }
    let result = must(
        "append after a conflict",
        session.append("notes-1", ExpectedVersion::Exact(2), notes(1)),
    )
    .await;
    assert_eq!(result.version, 3);
    drop(session);
    assert_eq!(
        must("the stream's version", store.stream_version("notes-1")).await,
        Some(3),
        "the conflict wrote nothing"
    );
}

/// Tenants: handles scoped to two tenants write streams of the same name
/// (and events of the same id) independently; no read through one handle
/// (a stream, a fold, the log, an event by position, the backlog, the end
/// of the log) ever returns another tenant's event; versions and conflicts
/// are per tenant; concurrent appends of many tenants to one stream name
/// (a Postgres group commit joins them) each land in their own tenant;
/// hostile tenant ids are refused by name.
async fn tenants_are_isolated<S: EventStore + Clone + 'static>(store: S) {
    use crate::TenantId;

    assert_eq!(
        store.tenant_id(),
        &TenantId::default(),
        "a store starts in the default tenant"
    );
    let a = must("tenant a", async { store.tenant("clinic-a") }).await;
    let b = must("tenant b", async { store.tenant("clinic-b") }).await;
    assert_eq!(a.tenant_id().as_str(), "clinic-a");

    let first = must(
        "append in a",
        a.append_events(
            "lead-1",
            ExpectedVersion::NoStream,
            &[created("a")],
            &Metadata::new(),
        ),
    )
    .await;
    // the same stream name, and the very same event id, in tenant b
    let mut twin = must("encode", async {
        b.encode_events(&[created("b")], &Metadata::new())
    })
    .await;
    twin[0].event_id = first.events[0].event_id;
    let second = must(
        "append the same stream name and event id in b",
        b.append("lead-1", ExpectedVersion::NoStream, twin),
    )
    .await;
    assert_eq!(
        (first.version, second.version),
        (1, 1),
        "each tenant has its own lead-1"
    );

    let names = |events: Vec<crate::Envelope<TestEvent>>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e.payload {
                TestEvent::Created(c) => c.name,
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        names(must("read a", a.read_stream_as::<TestEvent>("lead-1", ..)).await),
        ["a"]
    );
    assert_eq!(
        names(must("read b", b.read_stream_as::<TestEvent>("lead-1", ..)).await),
        ["b"]
    );
    assert!(
        must("read default", store.read_stream("lead-1", ..))
            .await
            .is_empty(),
        "the default tenant sees neither"
    );
    let mut folded = 0;
    must(
        "fold b",
        b.fold_stream_payloads("lead-1", .., |_| {
            folded += 1;
            Ok(())
        }),
    )
    .await;
    assert_eq!(folded, 1, "a fold reads its own tenant's stream only");

    // versions and conflicts are per tenant
    must(
        "append to a's lead-1",
        a.append_events(
            "lead-1",
            ExpectedVersion::Exact(1),
            &[scored(1)],
            &Metadata::new(),
        ),
    )
    .await;
    assert_eq!(
        must("version in a", a.stream_version("lead-1")).await,
        Some(2)
    );
    assert_eq!(
        must("version in b", b.stream_version("lead-1")).await,
        Some(1)
    );
    match b
        .append_events(
            "lead-1",
            ExpectedVersion::Exact(2),
            &[scored(2)],
            &Metadata::new(),
        )
        .await
    {
        Err(Error::Conflict(c)) => assert_eq!(c.actual, Some(1), "b's conflict names b's version"),
        other => panic!("b at version 2 must be a conflict, got {other:?}"),
    }
    let mut session = must("a session of b", b.session()).await;
    let mut seen = 0;
    must(
        "fold in b's session",
        session.fold_stream_payloads("lead-1", .., |_| {
            seen += 1;
            Ok(())
        }),
    )
    .await;
    assert_eq!(seen, 1, "a session folds its tenant's stream");
    let encoded = must("encode", async {
        b.encode_events(&[scored(3)], &Metadata::new())
    })
    .await;
    let appended = must(
        "append in b's session",
        session.append("lead-1", ExpectedVersion::Exact(1), encoded),
    )
    .await;
    assert_eq!(appended.version, 2);
    drop(session);

    // the log, by tenant
    let log_a = read_log_settled(&a, LogPosition::START, 2).await;
    let log_b = read_log_settled(&b, LogPosition::START, 2).await;
    assert_eq!(log_a.len(), 2, "a's log holds a's two events only");
    assert_eq!(log_b.len(), 2, "b's log holds b's two events only");
    let ids_a: HashSet<_> = log_a.iter().map(|e| e.log_position).collect();
    assert!(log_b.iter().all(|e| !ids_a.contains(&e.log_position)));
    assert!(
        must("default log", store.read_log(LogPosition::START, 100))
            .await
            .is_empty(),
        "the default tenant's log is empty"
    );
    for e in &log_b {
        assert!(
            must("read b's event through a", a.read_event(e.position()))
                .await
                .is_none(),
            "an event of b is not at its position in a"
        );
        assert!(must("read b's event", b.read_event(e.position()))
            .await
            .is_some());
    }
    assert_eq!(
        must("backlog a", a.backlog(LogPosition::START))
            .await
            .events,
        2
    );
    assert_eq!(
        must("backlog default", store.backlog(LogPosition::START))
            .await
            .events,
        0
    );
    let end_b = must("end of b's log", b.log_end()).await;
    if end_b.is_some() {
        // (a store whose events are visible at once may not say: `None`)
        assert_eq!(
            end_b,
            log_b.last().map(|e| e.log_position),
            "b's log ends at b's last event"
        );
    }
    assert_eq!(must("end of default", store.log_end()).await, None);

    // many tenants append to one stream name at once
    const TENANTS: usize = 8;
    let mut handles = Vec::new();
    for t in 0..TENANTS {
        let scoped = must("tenant", async { store.tenant(&format!("clinic-{t}")) }).await;
        handles.push(tokio::spawn(async move {
            scoped
                .append_events(
                    "hot",
                    ExpectedVersion::NoStream,
                    &[scored(t as u8)],
                    &Metadata::new(),
                )
                .await
                .map(|r| r.version)
        }));
    }
    for h in handles {
        match h.await {
            Ok(Ok(version)) => assert_eq!(version, 1, "each tenant's hot starts at 1"),
            Ok(Err(e)) => panic!("a tenant's append to its own new stream failed: {e}"),
            Err(e) => panic!("append task panicked: {e}"),
        }
    }
    for t in 0..TENANTS {
        let scoped = must("tenant", async { store.tenant(&format!("clinic-{t}")) }).await;
        let events = must("read hot", scoped.read_stream_as::<TestEvent>("hot", ..)).await;
        assert_eq!(events.len(), 1, "tenant clinic-{t} has its own hot");
        assert!(
            matches!(&events[0].payload, TestEvent::Scored(s) if s.score == t as u8),
            "clinic-{t}'s hot holds clinic-{t}'s event"
        );
    }

    for (id, says) in [
        ("", "must not be empty"),
        ("a*", "at byte 1"),
        ("a\0b", "at byte 1"),
        ("clinic 1", "at byte 6"),
    ] {
        match store.tenant(id) {
            Err(Error::InvalidInput(e)) => {
                assert_eq!(e.field, "tenant");
                assert!(e.problem.contains(says), "{id:?}: {}", e.problem);
            }
            Err(e) => panic!("tenant {id:?}: expected InvalidInput, got {e}"),
            Ok(_) => panic!("tenant {id:?} must be refused"),
        }
    }
    let long = "t".repeat(crate::tenant::MAX_TENANT_BYTES + 1);
    assert!(
        matches!(store.tenant(&long), Err(Error::InvalidInput(e)) if e.problem.contains("limit of 128 bytes"))
    );
}

/// An every-tenant handle reads every tenant's log as one, in log order,
/// each envelope with its own tenant (the log, an event by position, the
/// backlog, the end of the log), and refuses what needs one tenant.
async fn every_tenant_reads_the_whole_log<S: EventStore + Clone + 'static>(store: S) {
    let a = must("tenant a", async { store.tenant("clinic-a") }).await;
    let b = must("tenant b", async { store.tenant("clinic-b") }).await;
    let mut appended = Vec::new();
    for (tenant, stream, expected) in [
        (&a, "lead-1", ExpectedVersion::NoStream),
        (&b, "lead-1", ExpectedVersion::NoStream),
        (&a, "lead-1", ExpectedVersion::Exact(1)),
        (&store, "lead-9", ExpectedVersion::NoStream),
    ] {
        let r = must(
            "append",
            tenant.append_events(stream, expected, &[created("x")], &Metadata::new()),
        )
        .await;
        appended.push((tenant.tenant_id().clone(), r.events[0].log_position));
    }
    let every = store.every_tenant();
    assert!(every.tenant_id().is_every());
    let log = read_log_settled(&every, LogPosition::START, 4).await;
    let read: Vec<_> = log
        .iter()
        .map(|e| (e.tenant_id.clone(), e.log_position))
        .collect();
    assert_eq!(
        read, appended,
        "every tenant's events, in log order, each with its tenant"
    );
    let page = must("a page", every.read_log(log[0].log_position, 2)).await;
    assert_eq!(page.len(), 2, "pages go on after a checkpoint");
    assert_eq!(page[0].log_position, log[1].log_position);
    let second = must("read b's event", every.read_event(log[1].position())).await;
    assert_eq!(
        second.map(|e| e.tenant_id),
        Some(crate::TenantId::new("clinic-b").expect("tenant")),
        "an event by position, whichever tenant's"
    );
    assert_eq!(
        must("backlog", every.backlog(LogPosition::START))
            .await
            .events,
        4
    );
    assert_eq!(
        must("backlog", every.backlog(log[1].log_position))
            .await
            .events,
        2
    );
    if let Some(end) = must("log end", every.log_end()).await {
        assert_eq!(end, log[3].log_position, "the end of every tenant's log");
    }
    let refused = |what: &str, r: Result<(), Error>| match r {
        Err(Error::InvalidInput(e)) if e.field == "tenant" => {}
        other => {
            panic!("{what} through an every-tenant handle: expected InvalidInput, got {other:?}")
        }
    };
    refused(
        "an append",
        every
            .append_events(
                "lead-1",
                ExpectedVersion::Any,
                &[created("x")],
                &Metadata::new(),
            )
            .await
            .map(drop),
    );
    refused(
        "a stream read",
        every.read_stream("lead-1", ..).await.map(drop),
    );
    refused(
        "a stream version",
        every.stream_version("lead-1").await.map(drop),
    );
    let mut session = must("a session", every.session()).await;
    refused(
        "a session's fold",
        session
            .fold_stream_payloads("lead-1", .., |_| Ok(()))
            .await
            .map(drop),
    );
}
