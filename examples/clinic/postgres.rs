//! Tour section 10, on Postgres only: the log's horizon and the start-up
//! guard against a schema changed without a version bump.

use annals::postgres::sqlx::PgPool;
use annals::postgres::PgEventStore;

use super::{say, section, why, BoxError, ReshapedLeadScored};

/// Runs section 10 on `store`, whose database is behind `pool`.
pub(crate) async fn tour(store: &PgEventStore, pool: &PgPool) -> Result<(), BoxError> {
    section(10, "Postgres only: the horizon and the start-up guard");
    let horizon = store.horizon().await?;
    say(&format!(
        "Horizon: transaction {}; lag {:.1} s; {} committed event(s) held back.",
        horizon.xmin, horizon.lag_seconds, horizon.events_held_back
    ));
    say("Log readers only read below it: every transaction there has finished, so none can commit later behind a checkpoint.");
    say("xids are server-wide: a long-open transaction in any database of this server holds readers back;");
    say("`PgEventStore::horizon()` shows by how much, for health checks and alerts.");
    match PgEventStore::builder(pool.clone())
        .register::<ReshapedLeadScored>()
        .build()
        .await
    {
        Err(annals::Error::SchemaChanged(changes)) => {
            say("Building a store whose `lead.scored` v2 changed shape without a version bump fails at start-up:");
            say(&format!("  Error::SchemaChanged: {changes}"));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("the database accepted a changed schema".into()),
    }
    why("the database remembers every schema it stored events with, so a deployment with a silently changed payload refuses to start.");
    Ok(())
}
