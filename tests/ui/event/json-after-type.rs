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

fn v2_to_v3(v: serde_json::Value) -> Result<serde_json::Value, annals::event::UpcastError> {
    Ok(v)
}

#[derive(Event)]
enum LeadEvent {
    #[event(version = 3, history(1 = ScoredV1, 2 = json(v2_to_v3)))]
    Scored(Scored),
}

fn main() {}
