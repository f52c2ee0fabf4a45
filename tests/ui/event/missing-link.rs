use annals::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Scored {
    score: u8,
}

// version 1 is kept, but nothing converts it into version 2
#[derive(Serialize, Deserialize, JsonSchema)]
struct ScoredV1 {
    points: u8,
}

#[derive(Event)]
enum LeadEvent {
    #[event(version = 2, history(1 = ScoredV1))]
    Scored(Scored),
}

fn main() {}
