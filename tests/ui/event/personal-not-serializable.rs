use annals::personal::Personal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Not serializable: cannot be stored, so cannot be sealed.
#[derive(JsonSchema)]
struct Face {
    pixels: Vec<u8>,
}

#[derive(Serialize, Deserialize, JsonSchema, annals::Event)]
#[event(name = "patient.photographed", subject = patient_id)]
struct Photographed {
    patient_id: String,
    face: Personal<Face>,
}

fn main() {}
