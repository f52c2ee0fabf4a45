use annals::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Scored {
    score: u8,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct ScoredV1 {
    points: u8,
}

impl From<ScoredV1> for Scored {
    fn from(v: ScoredV1) -> Self {
        Scored { score: v.points }
    }
}

fn v1_to_v2(v: &serde_json::Value) -> serde_json::Value {
    v.clone()
}

#[derive(Event)]
enum LeadEvent {
    #[event(version = 2, history(1 = json(v1_to_v2)))]
    Scored(Scored),
}

fn main() {}
