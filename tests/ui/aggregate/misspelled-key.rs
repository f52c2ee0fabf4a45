use annals::{Aggregate, AggregateState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, annals::Event)]
enum LeadEvent {
    Created(String),
}

// one error, at the misspelled key; nothing about `AggregateState` below
#[derive(Default, Serialize, Deserialize, JsonSchema, Aggregate)]
#[aggregate(event = LeadEvent, snapshot_evry = 10)]
struct Lead {
    name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

// the rest of the crate uses the aggregate: it must not add errors
impl Aggregate for Lead {
    type Command = ();
    type Error = Never;
    fn handle(&self, _: &()) -> Result<Vec<LeadEvent>, Never> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &LeadEvent) {}
}

fn stream(id: &str) -> String {
    Lead::stream_id(id)
}

fn main() {
    let _ = stream("1");
}
