use annals::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, annals::Event)]
enum LeadEvent {
    Created(String),
}

#[derive(Default, Serialize, Deserialize, JsonSchema, Aggregate)]
#[aggregate(snapshot_every = 0, codec_version = 0, colour = "red")]
struct Lead {
    name: String,
}

fn main() {}
