//! The JSON API: the admin operations, one route each.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, Request};
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

/// The admin of the request's tenant: the `tenant` query parameter
/// (`?tenant=clinic-7`; without it, the tenant the `Admin` was built on).
/// An invalid id is a 400 naming the field.
pub(super) struct TenantAdmin(crate::Admin);

#[derive(Deserialize)]
struct TenantParam {
    tenant: Option<String>,
}

impl FromRequestParts<std::sync::Arc<super::Shared>> for TenantAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &std::sync::Arc<super::Shared>,
    ) -> Result<Self, ApiError> {
        let Query(param) = Query::<TenantParam>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(TenantAdmin(match param.tenant {
            None => state.admin.clone(),
            Some(t) => {
                let tenant = annals_core::TenantId::new(&t)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                state.admin.in_tenant(tenant)
            }
        }))
    }
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

pub(super) async fn status(TenantAdmin(admin): TenantAdmin) -> Answer {
    json(status::report(&admin).await?)
}

pub(super) async fn projections(TenantAdmin(admin): TenantAdmin) -> Answer {
    json(status::health(&admin).await?.1)
}

pub(super) async fn rebuild(
    TenantAdmin(admin): TenantAdmin,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    json(projections::rebuild(&admin, &path(name)?, false).await?)
}

pub(super) async fn pause(
    TenantAdmin(admin): TenantAdmin,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    json(projections::pause(&admin, &path(name)?).await?)
}

pub(super) async fn resume(
    TenantAdmin(admin): TenantAdmin,
    name: Result<Path<String>, PathRejection>,
) -> Answer {
    json(projections::resume(&admin, &path(name)?).await?)
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
    TenantAdmin(admin): TenantAdmin,
    q: Result<Query<DeadLetterList>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    json(
        dead_letters::list(
            &admin,
            q.handler,
            q.status.unwrap_or(StatusFilter::Pending),
            q.after,
            q.limit.unwrap_or(100),
        )
        .await?,
    )
}

pub(super) async fn dead_letter(
    TenantAdmin(admin): TenantAdmin,
    id: Result<Path<u64>, PathRejection>,
) -> Answer {
    json(dead_letters::show(&admin, path(id)?).await?)
}

pub(super) async fn replay(
    TenantAdmin(admin): TenantAdmin,
    id: Result<Path<u64>, PathRejection>,
) -> Answer {
    json(dead_letters::replay_one(&admin, path(id)?).await?)
}

#[derive(Deserialize)]
pub(super) struct Reason {
    reason: String,
}

pub(super) async fn discard(
    TenantAdmin(admin): TenantAdmin,
    id: Result<Path<u64>, PathRejection>,
    reason: Result<Json<Reason>, JsonRejection>,
) -> Answer {
    let id = path(id)?;
    json(dead_letters::discard(&admin, id, &body(reason)?.reason).await?)
}

#[derive(Deserialize)]
pub(super) struct Handler {
    handler: String,
}

pub(super) async fn replay_handler(
    TenantAdmin(admin): TenantAdmin,
    handler: Result<Json<Handler>, JsonRejection>,
) -> Answer {
    let handler = body(handler)?.handler;
    json(dead_letters::replay_handler(&admin, &handler, false).await?)
}

#[derive(Deserialize)]
pub(super) struct SagaList {
    #[serde(rename = "type")]
    saga_type: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn sagas(
    TenantAdmin(admin): TenantAdmin,
    q: Result<Query<SagaList>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let list = sagas::list(&admin, q.saga_type.as_deref(), q.limit.unwrap_or(100)).await?;
    json(list.iter().map(sagas::saga_json).collect::<Vec<Value>>())
}

pub(super) async fn saga(
    TenantAdmin(admin): TenantAdmin,
    id: Result<Path<Uuid>, PathRejection>,
) -> Answer {
    let (saga, commands) = sagas::show(&admin, path(id)?).await?;
    json(sagas::show_json(&saga, &commands))
}

pub(super) async fn retry(
    TenantAdmin(admin): TenantAdmin,
    id: Result<Path<Uuid>, PathRejection>,
) -> Answer {
    json(sagas::retry(&admin, path(id)?).await?)
}

#[derive(Deserialize)]
pub(super) struct StreamRange {
    from: Option<u64>,
    limit: Option<u64>,
}

pub(super) async fn stream(
    TenantAdmin(admin): TenantAdmin,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<StreamRange>, QueryRejection>,
) -> Answer {
    let (stream, q) = (path(stream)?, query(q)?);
    let events =
        streams::read(&admin, &stream, q.from.unwrap_or(1), q.limit.unwrap_or(100)).await?;
    json(events)
}
