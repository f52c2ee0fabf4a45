//! `sagas list|show|retry`.

use annals_core::saga::{OutboxEntry, SagaRecord};
use annals_core::SagaStore;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::SagasCommand;
use crate::output::{opt, short, time, Out, Table};
use crate::{Admin, AdminError, Exit};

pub(crate) fn saga_json(s: &SagaRecord) -> Value {
    json!({
        "saga_id": s.saga_id,
        "saga_type": s.saga_type,
        "correlation_id": s.correlation_id,
        "state": s.state,
        "data": s.data,
        "status": s.status.as_str(),
        "current_step": s.current_step,
        "completed_steps": s.completed_steps,
        "version": s.version,
        "deadline_at": s.deadline_at,
        "started_at": s.started_at,
        "updated_at": s.updated_at,
        "completed_at": s.completed_at,
        "error_message": s.error_message,
        "retry_count": s.retry_count,
        "last_event": s.last_event,
    })
}

pub(crate) fn command_json(c: &OutboxEntry) -> Value {
    json!({
        "id": c.id,
        "idempotency_key": c.idempotency_key,
        "command_type": c.command_type,
        "command": c.command,
        "step": c.step,
        "compensation": c.compensation,
        "attempts": c.attempts,
        "last_error": c.last_error,
        "created_at": c.created_at,
        "dispatched_at": c.dispatched_at,
        "failed_at": c.failed_at,
        "next_attempt_at": c.next_attempt_at,
    })
}

fn command_state(c: &OutboxEntry) -> &'static str {
    match (c.dispatched_at, c.failed_at) {
        (Some(_), _) => "delivered",
        (_, Some(_)) => "given up",
        _ => "waiting",
    }
}

pub(crate) async fn run(
    admin: &Admin,
    command: &SagasCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        SagasCommand::List { saga_type, limit } => {
            let sagas = list(admin, saga_type.as_deref(), *limit).await?;
            let json: Vec<Value> = sagas.iter().map(saga_json).collect();
            out.emit(&json, |w| {
                let mut table = Table::new(&[
                    "SAGA",
                    "TYPE",
                    "CORRELATION",
                    "STATE",
                    "STATUS",
                    "STEP",
                    "RETRIES",
                    "UPDATED",
                    "DEADLINE",
                    "ERROR",
                ]);
                for s in &sagas {
                    table.row(vec![
                        s.saga_id.to_string(),
                        s.saga_type.clone(),
                        s.correlation_id.clone(),
                        s.state.clone(),
                        s.status.as_str().to_owned(),
                        s.current_step.to_string(),
                        s.retry_count.to_string(),
                        time(Some(s.updated_at)),
                        time(s.deadline_at),
                        opt(s.error_message.as_deref().map(|e| short(e, 50))),
                    ]);
                }
                table.write(w)
            })?;
            Ok(Exit::Ok)
        }
        SagasCommand::Show { id } => {
            let (saga, commands) = show(admin, *id).await?;
            let json = show_json(&saga, &commands);
            out.emit(&json, |w| {
                writeln!(w, "saga {} ({})", saga.saga_id, saga.saga_type)?;
                writeln!(w, "  correlation: {}", saga.correlation_id)?;
                writeln!(
                    w,
                    "  status:      {} in state `{}`, step {}",
                    saga.status.as_str(),
                    saga.state,
                    saga.current_step
                )?;
                writeln!(w, "  retries:     {}", saga.retry_count)?;
                writeln!(w, "  started:     {}", time(Some(saga.started_at)))?;
                writeln!(w, "  updated:     {}", time(Some(saga.updated_at)))?;
                writeln!(w, "  deadline:    {}", time(saga.deadline_at))?;
                writeln!(w, "  error:       {}", opt(saga.error_message.as_deref()))?;
                writeln!(w, "  data:        {}", saga.data)?;
                writeln!(w)?;
                let mut table = Table::new(&[
                    "ID",
                    "STEP",
                    "COMMAND",
                    "KIND",
                    "STATE",
                    "ATTEMPTS",
                    "NEXT ATTEMPT",
                    "LAST ERROR",
                ]);
                for c in &commands {
                    table.row(vec![
                        c.id.to_string(),
                        c.step.to_string(),
                        c.command_type.clone(),
                        if c.compensation { "undo" } else { "do" }.to_owned(),
                        command_state(c).to_owned(),
                        c.attempts.to_string(),
                        time(Some(c.next_attempt_at)),
                        opt(c.last_error.as_deref().map(|e| short(e, 50))),
                    ]);
                }
                table.write(w)
            })?;
            Ok(Exit::Ok)
        }
        SagasCommand::Retry { id } => {
            let retried = retry(admin, *id).await?;
            out.emit(&retried, |w| {
                writeln!(
                    w,
                    "saga {id} ({}): {} undelivered command(s) made due now",
                    retried.status, retried.commands_rescheduled
                )
            })?;
            Ok(Exit::Ok)
        }
    }
}

/// Unfinished sagas, by id.
pub(crate) async fn list(
    admin: &Admin,
    saga_type: Option<&str>,
    limit: usize,
) -> Result<Vec<SagaRecord>, AdminError> {
    Ok(admin.sagas.list_unfinished(saga_type, None, limit).await?)
}

/// One saga and its outbox commands.
pub(crate) async fn show(
    admin: &Admin,
    id: Uuid,
) -> Result<(SagaRecord, Vec<OutboxEntry>), AdminError> {
    let saga = find(admin, id).await?;
    let commands = admin.sagas.commands_of(id).await?;
    Ok((saga, commands))
}

/// A saga and its commands as JSON.
pub(crate) fn show_json(saga: &SagaRecord, commands: &[OutboxEntry]) -> Value {
    json!({
        "saga": saga_json(saga),
        "commands": commands.iter().map(command_json).collect::<Vec<_>>(),
    })
}

/// What `retry` did.
#[derive(Debug, Serialize)]
pub(crate) struct Retried {
    saga_id: Uuid,
    status: &'static str,
    commands_rescheduled: u64,
}

/// Makes the saga's undelivered commands due now.
pub(crate) async fn retry(admin: &Admin, id: Uuid) -> Result<Retried, AdminError> {
    let saga = find(admin, id).await?;
    let commands_rescheduled = admin.sagas.retry_now(id).await?;
    Ok(Retried {
        saga_id: id,
        status: saga.status.as_str(),
        commands_rescheduled,
    })
}

async fn find(admin: &Admin, id: Uuid) -> Result<SagaRecord, AdminError> {
    admin
        .sagas
        .get(id)
        .await?
        .ok_or(AdminError::SagaNotFound { id })
}
