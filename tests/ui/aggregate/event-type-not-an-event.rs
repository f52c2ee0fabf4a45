use annals::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, annals::Event)]
enum LeadEvent {
    Created(String),
}

struct NotAnEvent;

#[derive(Default, Serialize, Deserialize, JsonSchema, Aggregate)]
#[aggregate(event = NotAnEvent)]
struct Lead {
    name: String,
}

fn main() {}
