use annals::personal::Personal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema, annals::Event)]
#[event(name = "patient.registered")]
struct Registered {
    patient_id: String,
    clinic: String,
    name: Personal<String>,
    phone: Personal<String>,
}

fn main() {}
