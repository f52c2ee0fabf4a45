//! `schemas list|check`: the recorded event schemas against the code's.

use std::collections::BTreeMap;

use annals_core::Error;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::SchemasCommand;
use crate::output::{time, Out, Table};
use crate::{Admin, AdminError, Exit};

/// One (event type, version): recorded, in the code, or both.
#[derive(Debug, Serialize)]
struct SchemaRow {
    event_type: String,
    version: u32,
    /// `matches`, `changed` (same version, another schema: a missing
    /// version bump), `recorded only` (not registered with the admin) or
    /// `not recorded` (new in the code: recorded at the next start).
    state: &'static str,
    recorded_fingerprint: Option<String>,
    code_fingerprint: Option<String>,
    rust_type: Option<String>,
    recorded_at: Option<DateTime<Utc>>,
}

pub(crate) async fn run(
    admin: &Admin,
    command: &SchemasCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    let rows = compare(admin).await?;
    match command {
        SchemasCommand::List => {
            out.emit(&rows, |w| {
                let mut table =
                    Table::new(&["TYPE", "VERSION", "STATE", "RUST TYPE", "RECORDED AT"]);
                for r in &rows {
                    table.row(vec![
                        r.event_type.clone(),
                        r.version.to_string(),
                        r.state.to_owned(),
                        r.rust_type.clone().unwrap_or_else(|| "-".to_owned()),
                        time(r.recorded_at),
                    ]);
                }
                table.write(w)
            })?;
            Ok(Exit::Ok)
        }
        SchemasCommand::Check => {
            let changed: Vec<&SchemaRow> = rows.iter().filter(|r| r.state == "changed").collect();
            out.emit(&changed, |w| {
                if changed.is_empty() {
                    let count = |state| rows.iter().filter(|r| r.state == state).count();
                    writeln!(
                        w,
                        "ok: {} of the code's event schemas match the recorded ones; {} not recorded yet (new: recorded at the next start)",
                        count("matches"),
                        count("not recorded")
                    )
                } else {
                    writeln!(w, "{} event schema(s) changed without a version bump:", changed.len())?;
                    for r in &changed {
                        writeln!(
                            w,
                            "  {} v{}: recorded {}, code {}",
                            r.event_type,
                            r.version,
                            r.recorded_fingerprint.as_deref().unwrap_or("-"),
                            r.code_fingerprint.as_deref().unwrap_or("-")
                        )?;
                    }
                    writeln!(w, "give each changed payload a new version and keep the old type in the event's history(...)")
                }
            })?;
            Ok(if changed.is_empty() {
                Exit::Ok
            } else {
                Exit::Unhealthy
            })
        }
    }
}

async fn compare(admin: &Admin) -> Result<Vec<SchemaRow>, AdminError> {
    let recorded: Vec<(String, i32, String, String, DateTime<Utc>)> =
        annals_postgres::sqlx::query_as(
            "SELECT event_type, version, fingerprint, rust_type, recorded_at
           FROM annals_event_schemas ORDER BY event_type, version",
        )
        .fetch_all(admin.store.pool())
        .await
        .map_err(|e| Error::backend("reading the recorded event schemas", e))?;
    let mut code: BTreeMap<(String, u32), String> = admin.code_registry()?.fingerprints();
    let mut rows = Vec::new();
    for (event_type, version, fingerprint, rust_type, recorded_at) in recorded {
        let version = version.max(0) as u32;
        let current = code.remove(&(event_type.clone(), version));
        let state = match &current {
            None => "recorded only",
            Some(c) if *c == fingerprint => "matches",
            Some(_) => "changed",
        };
        rows.push(SchemaRow {
            event_type,
            version,
            state,
            recorded_fingerprint: Some(fingerprint),
            code_fingerprint: current,
            rust_type: Some(rust_type),
            recorded_at: Some(recorded_at),
        });
    }
    for ((event_type, version), fingerprint) in code {
        rows.push(SchemaRow {
            event_type,
            version,
            state: "not recorded",
            recorded_fingerprint: None,
            code_fingerprint: Some(fingerprint),
            rust_type: None,
            recorded_at: None,
        });
    }
    rows.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
    Ok(rows)
}
