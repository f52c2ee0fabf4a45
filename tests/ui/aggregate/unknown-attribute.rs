use annals::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, annals::Event)]
enum LeadEvent {
    Created(String),
}

#[derive(Default, Serialize, Deserialize, JsonSchema, Aggregate)]
#[aggregate(event = LeadEvent, snapshot_evry = 10)]
struct Lead {
    name: String,
}

fn main() {}
