use annals::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, annals::Event)]
enum LeadEvent {
    Created(String),
}

#[derive(Default, Aggregate)]
#[aggregate(event = LeadEvent)]
struct Lead {
    name: String,
}

fn main() {}
