//! The JSON API: the admin operations, one route each.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{ApiError, State};
use crate::cli::StatusFilter;
use crate::commands::{dead_letters, projections, sagas, status, streams};

type Answer = Result<Response, ApiError>;

/// Answers 401 unless the request carries the bearer token.
pub(super) async fn require_token(state: State, request: Request, next: Next) -> Response {
    if state.auth.bearer_ok(request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

fn json<T: serde::Serialize>(value: T) -> Answer {
    Ok(Json(value).into_response())
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

pub(super) async fn status(state: State) -> Answer {
    json(status::report(&state.admin).await?)
}

pub(super) async fn projections(state: State) -> Answer {
    json(status::health(&state.admin).await?.1)
}

pub(super) async fn rebuild(state: State, name: Result<Path<String>, PathRejection>) -> Answer {
    json(projections::rebuild(&state.admin, &path(name)?, false).await?)
}

pub(super) async fn pause(state: State, name: Result<Path<String>, PathRejection>) -> Answer {
    json(projections::pause(&state.admin, &path(name)?).await?)
}

pub(super) async fn resume(state: State, name: Result<Path<String>, PathRejection>) -> Answer {
    json(projections::resume(&state.admin, &path(name)?).await?)
}

#[derive(Deserialize)]
pub(super) struct DeadLetterList {
    handler: Option<String>,
    status: Option<StatusFilter>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub(super) async fn dead_letters(
    state: State,
    q: Result<Query<DeadLetterList>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    json(
        dead_letters::list(
            &state.admin,
            q.handler,
            q.status.unwrap_or(StatusFilter::Pending),
            q.after,
            q.limit.unwrap_or(100),
        )
        .await?,
    )
}

pub(super) async fn dead_letter(state: State, id: Result<Path<u64>, PathRejection>) -> Answer {
    json(dead_letters::show(&state.admin, path(id)?).await?)
}

pub(super) async fn replay(state: State, id: Result<Path<u64>, PathRejection>) -> Answer {
    json(dead_letters::replay_one(&state.admin, path(id)?).await?)
}

#[derive(Deserialize)]
pub(super) struct Reason {
    reason: String,
}

pub(super) async fn discard(
    state: State,
    id: Result<Path<u64>, PathRejection>,
    reason: Result<Json<Reason>, JsonRejection>,
) -> Answer {
    let id = path(id)?;
    json(dead_letters::discard(&state.admin, id, &body(reason)?.reason).await?)
}

#[derive(Deserialize)]
pub(super) struct Handler {
    handler: String,
}

pub(super) async fn replay_handler(
    state: State,
    handler: Result<Json<Handler>, JsonRejection>,
) -> Answer {
    let handler = body(handler)?.handler;
    json(dead_letters::replay_handler(&state.admin, &handler, false).await?)
}

#[derive(Deserialize)]
pub(super) struct SagaList {
    #[serde(rename = "type")]
    saga_type: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn sagas(state: State, q: Result<Query<SagaList>, QueryRejection>) -> Answer {
    let q = query(q)?;
    let list = sagas::list(&state.admin, q.saga_type.as_deref(), q.limit.unwrap_or(100)).await?;
    json(list.iter().map(sagas::saga_json).collect::<Vec<Value>>())
}

pub(super) async fn saga(state: State, id: Result<Path<Uuid>, PathRejection>) -> Answer {
    let (saga, commands) = sagas::show(&state.admin, path(id)?).await?;
    json(sagas::show_json(&saga, &commands))
}

pub(super) async fn retry(state: State, id: Result<Path<Uuid>, PathRejection>) -> Answer {
    json(sagas::retry(&state.admin, path(id)?).await?)
}

#[derive(Deserialize)]
pub(super) struct StreamRange {
    from: Option<u64>,
    limit: Option<u64>,
}

pub(super) async fn stream(
    state: State,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<StreamRange>, QueryRejection>,
) -> Answer {
    let (stream, q) = (path(stream)?, query(q)?);
    let events = streams::read(
        &state.admin,
        &stream,
        q.from.unwrap_or(1),
        q.limit.unwrap_or(100),
    )
    .await?;
    json(events)
}
