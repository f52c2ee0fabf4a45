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

#[derive(Serialize, Deserialize, JsonSchema)]
struct Rescored {
    score: u8,
}

#[derive(Event)]
enum LeadEvent {
    #[event(name = "lead.scored")]
    Scored(Scored),
    #[event(name = "lead.scored")]
    Rescored(Rescored),
}

fn main() {}
