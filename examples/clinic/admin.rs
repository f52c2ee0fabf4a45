//! `cargo run --example clinic -- admin ...`: annals' admin commands,
//! mounted in the clinic's own binary with the clinic's projections, saga
//! and event types registered, so that a rebuild or a replay runs the
//! clinic's own handlers.
//!
//! The read model registered here is `lead_directory`, a Postgres table of
//! leads whose treatment must be one the clinic offers (a foreign key to
//! `clinic_treatments`): a lead for a treatment the clinic does not list
//! yet is parked as a dead letter, and replayed once the treatment is
//! added.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use annals::admin::{Admin, AdminArgs, Exit};
use annals::personal::PersonalStore;
use annals::postgres::sqlx::{self, PgConnection, PgPool};
use annals::postgres::{connect, PgEventStore, PgProjectionStore, PgSagaStore, PgSubjectKeys};
use annals::TenantId;
use annals::{Envelope, HandlerError, Projection, ProjectionRunner, RetryPolicy};

use super::{BoxError, LeadEvent};

/// The projection's name.
pub(crate) const LEAD_DIRECTORY: &str = "lead_directory";

/// The clinic's read-model tables (the application's own migration).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS clinic_treatments (name text PRIMARY KEY);
INSERT INTO clinic_treatments (name) VALUES ('implant'), ('whitening'), ('cleaning')
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS clinic_lead_directory (
    lead_id      text PRIMARY KEY,
    name         text,
    treatment    text NOT NULL REFERENCES clinic_treatments (name),
    score        smallint,
    qualified_by text,
    version      bigint NOT NULL
);";

/// Every lead, in a Postgres table written in the runner's transaction.
pub(crate) struct LeadDirectory;

/// A database error is the event's fault (a constraint it breaks); a
/// connection that failed is the dependency's.
fn failure(e: sqlx::Error) -> HandlerError {
    if e.as_database_error().is_some() {
        HandlerError::event(e)
    } else {
        HandlerError::dependency(e)
    }
}

impl Projection for LeadDirectory {
    type Event = LeadEvent;
    type Conn = PgConnection;

    fn name(&self) -> &str {
        LEAD_DIRECTORY
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        e: &Envelope<LeadEvent>,
    ) -> Result<(), HandlerError> {
        let lead = e.aggregate_id();
        let version = i64::try_from(e.stream_version).unwrap_or(i64::MAX);
        let query = match &e.payload {
            LeadEvent::Created(c) => sqlx::query(
                "INSERT INTO clinic_lead_directory (lead_id, name, treatment, version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (lead_id) DO UPDATE
                    SET name = EXCLUDED.name, treatment = EXCLUDED.treatment, version = EXCLUDED.version",
            )
            .bind(lead)
            // NULL once the lead was forgotten
            .bind(c.name.known())
            .bind(&c.treatment)
            .bind(version),
            LeadEvent::Scored(s) => sqlx::query(
                "UPDATE clinic_lead_directory SET score = $2, version = $3 WHERE lead_id = $1",
            )
            .bind(lead)
            .bind(i16::from(s.score))
            .bind(version),
            LeadEvent::Qualified(q) => sqlx::query(
                "UPDATE clinic_lead_directory SET qualified_by = $2, version = $3 WHERE lead_id = $1",
            )
            .bind(lead)
            .bind(&q.by)
            .bind(version),
        };
        query.execute(conn).await.map_err(failure)?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection, _: &TenantId) -> Result<(), HandlerError> {
        sqlx::query("DELETE FROM clinic_lead_directory")
            .execute(conn)
            .await
            .map_err(failure)?;
        Ok(())
    }
}

/// Creates the clinic's read-model tables if they do not exist.
pub(crate) async fn create_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(TABLES).execute(pool).await.map(|_| ())
}

/// The admin with everything the clinic registers. Its runners read
/// through a `PersonalStore` with the clinic's KEK, as the service does, so
/// that a rebuild or a replay opens the leads' names (or reads them as
/// forgotten) instead of meeting sealed values.
pub(crate) async fn admin(pool: PgPool) -> Result<Admin, BoxError> {
    // no `register` on the store: `admin schemas check` reports a changed
    // schema instead of the store refusing to start
    let store = PgEventStore::builder(pool.clone())
        .without_group_commit()
        .build()
        .await?;
    let personal = PersonalStore::new(
        store.clone(),
        PgSubjectKeys::new(pool.clone(), super::kek()?),
    );
    let projections = PgProjectionStore::new(pool.clone());
    let directory = ProjectionRunner::new(
        personal.clone(),
        projections.clone(),
        Arc::new(LeadDirectory),
    )
    // an operator waits for a rebuild: give up on a bad event quickly
    .retry(RetryPolicy::new(2).initial_delay(Duration::from_millis(10)));
    let builder = Admin::builder(store)
        .projection(directory)
        .events::<LeadEvent>();
    let builder =
        super::sagas::register_admin(builder, personal, projections, PgSagaStore::new(pool));
    Ok(builder.build())
}

/// Runs `admin ARGS...` on the database at `database_url`.
pub(crate) async fn run(database_url: Option<&str>, args: &[String]) -> Result<ExitCode, BoxError> {
    // parsed first: `admin --help` needs no database
    let args = match AdminArgs::from_args(args) {
        Ok(args) => args,
        Err(exit) => return Ok(exit.into()),
    };
    let Some(url) = database_url else {
        eprintln!("error: the admin commands work on Postgres: set DATABASE_URL, or run `scripts/with-services cargo run --example clinic -- admin ...`");
        return Ok(Exit::Usage.into());
    };
    let pool = connect(url).await?;
    create_tables(&pool).await?;
    let admin = admin(pool).await?;
    Ok(admin.run(&args).await.into())
}
