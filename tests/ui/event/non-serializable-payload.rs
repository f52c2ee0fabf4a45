use annals::Event;
use schemars::JsonSchema;

// no Serialize / Deserialize
#[derive(JsonSchema)]
struct Scored {
    score: u8,
}

#[derive(Event)]
enum LeadEvent {
    Scored(Scored),
}

fn main() {}
