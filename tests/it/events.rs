//! `#[derive(Event)]` through the facade: names, versions, round trips,
//! upcasting and the schema guard.

use annals::{
    event::DecodeError, event::UpcastError, schema::fingerprint, schema::SchemaLock, Event,
    EventStore, EventStoreExt, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent,
    SchemaRegistry,
};
use proptest::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadCreated {
    name: String,
    clinic: String,
}

/// v3: score, confidence and the model that scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadScored {
    score: u8,
    confidence: f64,
    model: String,
}

/// v2: no model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadScoredV2 {
    score: u8,
    confidence: f64,
}

/// v1: just a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadScoredV1 {
    score: u8,
}

impl From<LeadScoredV1> for LeadScoredV2 {
    fn from(v: LeadScoredV1) -> Self {
        LeadScoredV2 {
            score: v.score,
            confidence: 0.5,
        }
    }
}

impl From<LeadScoredV2> for LeadScored {
    fn from(v: LeadScoredV2) -> Self {
        LeadScored {
            score: v.score,
            confidence: v.confidence,
            model: "legacy".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct LeadQualified {
    reason: String,
}

/// v1 called the field `why`: a JSON-level upcaster renames it.
fn qualified_v1(mut v: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| UpcastError::new("expected an object"))?;
    let why = obj
        .remove("why")
        .ok_or_else(|| UpcastError::new("missing `why`"))?;
    obj.insert("reason".to_owned(), why);
    Ok(v)
}

#[derive(Debug, Clone, PartialEq, Event)]
enum LeadEvent {
    Created(LeadCreated),
    #[event(version = 3, history(1 = LeadScoredV1, 2 = LeadScoredV2))]
    Scored(LeadScored),
    #[event(name = "lead.qualified.v", version = 2, history(1 = json(qualified_v1)))]
    Qualified(LeadQualified),
}

/// A standalone struct event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Event)]
#[event(name = "clinic.opened")]
struct ClinicOpened {
    city: String,
}

#[test]
fn names_and_versions() {
    let names: Vec<(&str, u32, u32)> = LeadEvent::TYPES
        .iter()
        .map(|t| (t.name, t.version, t.oldest_version))
        .collect();
    assert_eq!(
        names,
        vec![
            ("lead.created", 1, 1),
            ("lead.scored", 3, 1),
            ("lead.qualified.v", 2, 1)
        ]
    );
    let e = LeadEvent::Qualified(LeadQualified {
        reason: "budget".into(),
    });
    assert_eq!(e.event_type(), "lead.qualified.v");
    assert_eq!(e.schema_version(), 2);
    assert_eq!(ClinicOpened::TYPES[0].name, "clinic.opened");
    let schemas: Vec<(&str, u32)> = LeadEvent::schemas()
        .iter()
        .map(|s| (s.event_type, s.version))
        .collect();
    assert_eq!(
        schemas,
        vec![
            ("lead.created", 1),
            ("lead.scored", 1),
            ("lead.scored", 2),
            ("lead.scored", 3),
            ("lead.qualified.v", 1),
            ("lead.qualified.v", 2)
        ],
        "a schema for every (type, version), historical ones included"
    );
}

#[test]
fn decode_errors_are_typed() {
    let raw = serde_json::value::to_raw_value(&serde_json::json!({"score": 1})).expect("raw");
    match LeadEvent::decode("lead.scored", 4, &raw) {
        Err(DecodeError::VersionTooNew {
            event_type,
            version: 4,
            current: 3,
        }) => assert_eq!(event_type, "lead.scored"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        LeadEvent::decode("lead.scored", 0, &raw),
        Err(DecodeError::VersionTooOld {
            version: 0,
            oldest: 1,
            ..
        })
    ));
    assert!(matches!(
        LeadEvent::decode("lead.vanished", 1, &raw),
        Err(DecodeError::UnknownEventType { .. })
    ));
    let bad = serde_json::value::to_raw_value(
        &serde_json::json!({"score": 1, "confidence": "x", "model": "m"}),
    )
    .expect("raw");
    match LeadEvent::decode("lead.scored", 3, &bad) {
        Err(DecodeError::Deserialize { path, .. }) => assert_eq!(path, "confidence"),
        other => panic!("{other:?}"),
    }
    let v1 = serde_json::value::to_raw_value(&serde_json::json!({"because": "x"})).expect("raw");
    match LeadEvent::decode("lead.qualified.v", 1, &v1) {
        Err(e @ DecodeError::Upcast { .. }) => {
            // the message says what failed, its source why
            let source = std::error::Error::source(&e).map(|s| s.to_string());
            assert!(source.is_some_and(|s| s.contains("missing `why`")), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}

fn arb_event() -> impl Strategy<Value = LeadEvent> {
    prop_oneof![
        ("[a-zA-Z ]{0,20}", "[a-z-]{1,10}")
            .prop_map(|(name, clinic)| LeadEvent::Created(LeadCreated { name, clinic })),
        (any::<u8>(), 0.0f64..1.0, "[a-z0-9-]{0,12}").prop_map(|(score, confidence, model)| {
            LeadEvent::Scored(LeadScored {
                score,
                confidence,
                model,
            })
        }),
        ".{0,30}".prop_map(|reason| LeadEvent::Qualified(LeadQualified { reason })),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(event in arb_event()) {
        let payload = event.encode().expect("encode");
        let back = LeadEvent::decode(event.event_type(), event.schema_version(), &payload).expect("decode");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn upcasting_a_v1_payload_equals_converting_by_hand(score in any::<u8>()) {
        let v1 = LeadScoredV1 { score };
        let raw = serde_json::value::to_raw_value(&v1).expect("raw");
        let decoded = LeadEvent::decode("lead.scored", 1, &raw).expect("decode");
        let by_hand = LeadScored::from(LeadScoredV2::from(v1));
        prop_assert_eq!(decoded, LeadEvent::Scored(by_hand));
    }

    #[test]
    fn json_upcaster_equals_renaming_by_hand(why in ".{0,30}") {
        let raw = serde_json::value::to_raw_value(&serde_json::json!({"why": why})).expect("raw");
        let decoded = LeadEvent::decode("lead.qualified.v", 1, &raw).expect("decode");
        prop_assert_eq!(decoded, LeadEvent::Qualified(LeadQualified { reason: why }));
    }
}

#[tokio::test]
async fn store_validates_and_upcasts_through_the_facade() {
    let store = InMemoryEventStore::new();
    store
        .append_events(
            "lead-1",
            ExpectedVersion::NoStream,
            &[LeadEvent::Created(LeadCreated {
                name: "Ana".into(),
                clinic: "c1".into(),
            })],
            &Metadata::new(),
        )
        .await
        .expect("append");
    // a v1 stored long ago
    let old = NewEvent::new(
        "lead.scored",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({"score": 42})).expect("raw"),
        Metadata::new(),
    );
    store
        .append("lead-1", ExpectedVersion::Exact(1), vec![old])
        .await
        .expect("append v1");
    // a v1 payload that does not match v1's schema is refused
    let invalid = NewEvent::new(
        "lead.scored",
        1,
        serde_json::value::to_raw_value(&serde_json::json!({"score": "high"})).expect("raw"),
        Metadata::new(),
    );
    let err = store
        .append("lead-1", ExpectedVersion::Any, vec![invalid])
        .await
        .expect_err("invalid");
    assert!(matches!(err, annals::Error::SchemaViolation(_)), "{err}");
    let events = store
        .read_stream_as::<LeadEvent>("lead-1", ..)
        .await
        .expect("read");
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].schema_version, 1,
        "the envelope keeps the stored version"
    );
    assert_eq!(
        events[1].payload,
        LeadEvent::Scored(LeadScored {
            score: 42,
            confidence: 0.5,
            model: "legacy".into()
        })
    );
}

#[test]
fn registry_refuses_two_types_claiming_one_name_with_different_schemas() {
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
    #[event(name = "clinic.opened")]
    struct OtherOpened {
        street: u32,
    }
    let registry = SchemaRegistry::new();
    registry.register::<ClinicOpened>().expect("first");
    registry.register::<ClinicOpened>().expect("idempotent");
    let err = registry.register::<OtherOpened>().expect_err("clash");
    assert!(err.to_string().contains("clinic.opened"), "{err}");
}

#[test]
fn fingerprints_ignore_docs_and_order_but_not_shape() {
    let a = serde_json::json!({"type": "object", "title": "A", "properties": {"x": {"type": "integer", "description": "doc"}}, "required": ["x"]});
    let b = serde_json::json!({"required": ["x"], "properties": {"x": {"type": "integer"}}, "type": "object"});
    let c = serde_json::json!({"required": ["x"], "properties": {"x": {"type": "string"}}, "type": "object"});
    // a property *named* description is part of the shape
    let d =
        serde_json::json!({"type": "object", "properties": {"description": {"type": "string"}}});
    let e = serde_json::json!({"type": "object", "properties": {}});
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_ne!(fingerprint(&b), fingerprint(&c));
    assert_ne!(fingerprint(&d), fingerprint(&e));
    assert!(fingerprint(&a).starts_with("sha256:"));
}

#[test]
fn schema_lock_reports_changes_without_a_version_bump() {
    let registry = SchemaRegistry::new();
    registry.register::<LeadEvent>().expect("register");
    let lock = SchemaLock::from_registry(&registry);
    let text = lock.render();
    assert_eq!(SchemaLock::parse(&text).expect("parse"), lock);
    lock.check(&registry).expect("unchanged");
    let tampered = text.replacen("lead.created 1 sha256:", "lead.created 1 sha256:00", 1);
    let changes = SchemaLock::parse(&tampered)
        .expect("parse")
        .check(&registry)
        .expect_err("changed");
    assert_eq!(changes.changes.len(), 1);
    assert_eq!(changes.changes[0].event_type, "lead.created");
    assert!(changes.to_string().contains("bump its `version` to 2"));
    assert!(SchemaLock::parse("lead.created one sha256:x").is_err());
}

#[test]
fn schema_lock_file_helper() {
    let dir = std::env::temp_dir().join(format!("annals-lock-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("schemas.lock");
    std::fs::write(&path, "").expect("empty lock");
    // an empty lock gains the current entries (outside CI), then passes
    if std::env::var_os("CI").is_none() {
        SchemaLock::assert_file::<LeadEvent>(&path);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("lead.scored 3 sha256:"));
        SchemaLock::assert_file::<LeadEvent>(&path);
    }
    let registry = SchemaRegistry::new();
    registry.register::<LeadEvent>().expect("register");
    std::fs::write(
        &path,
        SchemaLock::from_registry(&registry)
            .render()
            .replace("sha256:", "sha256:ff"),
    )
    .expect("tampered lock");
    let result = std::panic::catch_unwind(|| SchemaLock::assert_file::<LeadEvent>(&path));
    assert!(result.is_err(), "a changed schema fails the test");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `#[event(subject = …)]` declares whose personal data an event carries:
/// a field of the payload (any type with `Display`), or the stream.
#[test]
fn events_name_their_subject() {
    use annals::event::Subject;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    struct Booked {
        patient_id: uuid::Uuid,
        slot: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    struct Noted {
        text: String,
    }

    #[derive(Debug, Clone, PartialEq, annals::Event)]
    enum VisitEvent {
        #[event(subject = patient_id)]
        Booked(Booked),
        #[event(subject = envelope.stream_id)]
        Noted(Noted),
        Cancelled(u32),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, annals::Event)]
    #[event(name = "patient.renamed", subject = patient)]
    struct Renamed {
        patient: String,
        name: String,
    }

    let id = uuid::Uuid::now_v7();
    let booked = VisitEvent::Booked(Booked {
        patient_id: id,
        slot: 3,
    });
    assert_eq!(booked.subject(), Subject::Field(id.to_string()));
    let noted = VisitEvent::Noted(Noted { text: "x".into() });
    assert_eq!(noted.subject(), Subject::Stream);
    assert_eq!(VisitEvent::Cancelled(1).subject(), Subject::None);
    let renamed = Renamed {
        patient: "p-7".into(),
        name: "Ana".into(),
    };
    assert_eq!(renamed.subject(), Subject::Field("p-7".into()));
    // an event type that names no subject has none
    assert_eq!(
        LeadEvent::Created(LeadCreated {
            name: "A".into(),
            clinic: "c".into()
        })
        .subject(),
        Subject::None
    );
}
