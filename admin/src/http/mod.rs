//! The HTTP admin: the admin operations as a JSON API and a status page,
//! in an axum [`Router`] the application mounts (feature `http`).
//!
//! ```no_run
//! use annals::admin::http::{router, Auth};
//! use annals::admin::Admin;
//! use annals::postgres::{connect, PgEventStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = connect("postgres://app@localhost/clinic").await?;
//! let store = PgEventStore::builder(pool).build().await?;
//! let admin = Admin::builder(store).build(); // with its projections and event types
//! let token = std::env::var("ANNALS_ADMIN_TOKEN")?; // at least 16 characters
//! let app = axum::Router::new().nest("/admin", router(admin, Auth::bearer(token)?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # The JSON API
//!
//! Every route under `api/` wants `Authorization: Bearer <token>` and
//! answers `401 {"error": "..."}` without it. Errors are `{"error": "..."}`
//! with 400 (a malformed request), 404 (no such projection, dead letter,
//! saga or stream), 409 (the entry is not pending, the projection is paused
//! or owned by a running runner), 422 (a replay that failed again) or 500.
//!
//! | route | what it does |
//! |-------|--------------|
//! | `GET api/status` | as `admin status --json` |
//! | `GET api/projections` | as `projections list` |
//! | `POST api/projections/{name}/rebuild` / `pause` / `resume` | as `projections rebuild` / `pause` / `resume` |
//! | `GET api/dead-letters?handler=H&status=pending&after=0&limit=100` | as `dead-letters list` (`status`: `pending`, `resolved`, `discarded`, `all`) |
//! | `GET api/dead-letters/{id}` | as `dead-letters show` |
//! | `POST api/dead-letters/{id}/replay` | as `dead-letters replay ID` |
//! | `POST api/dead-letters/{id}/discard`, body `{"reason": "..."}` | as `dead-letters discard` |
//! | `POST api/dead-letters/replay`, body `{"handler": "..."}` | as `dead-letters replay --handler` |
//! | `GET api/sagas?type=T&limit=100` | as `sagas list` |
//! | `GET api/sagas/{id}` | as `sagas show` |
//! | `POST api/sagas/{id}/retry` | as `sagas retry` |
//! | `GET api/streams/{stream}?from=1&limit=100` | as `streams read`, as one JSON array |
//!
//! Every API route takes `?tenant=ID` (as the commands' `--tenant`): the
//! call reads and changes that tenant's rows only, with the runners
//! registered for it; without it, the tenant of the store the `Admin` was
//! built on. An invalid id is a 400 naming `tenant`. The status page shows
//! that tenant only.
//!
//! # The status page
//!
//! `GET` on the mount path (`/admin` above) is a server-rendered HTML page
//! (no JavaScript): projections with their lag and status (pause and
//! resume buttons, and a rebuild button behind a confirmation box the
//! browser requires ticked; the rebuild runs inside the request), the horizon, pending dead letters with replay and
//! discard buttons, sagas in flight with a retry button. Each button is a
//! plain form that posts, then redirects back to the page. Every value
//! from the database is HTML-escaped, and the page's
//! `Content-Security-Policy` lets no script run and no other site frame it.
//!
//! Without a session the page answers 401 with a login form: the operator
//! pastes the token, and the page sets an `HttpOnly`, `Secure`,
//! `SameSite=Strict` session cookie scoped to the mount path (valid for
//! 8 hours; the log-out button clears it). The cookie holds a hash derived
//! from the token, not the token: it opens the page, not the JSON API. The
//! token never appears in a URL. `SameSite=Strict` is what keeps another
//! site from posting the page's forms with the operator's cookie. Serve
//! the admin over HTTPS (browsers accept `Secure` cookies over plain HTTP
//! only from `localhost`).
//!
//! With [`Auth::application`] the router checks nothing, and the
//! application puts its own authentication in front of it (a
//! `route_layer`, a reverse proxy).

mod api;
mod auth;
mod page;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::{Admin, AdminError};

pub use auth::{Auth, ShortToken};

/// The admin's routes: the JSON API under `api/` and the status page at
/// the root (see the [module docs](self)). Mount it with
/// [`Router::nest`] (at `/admin`, say) or serve it as it is.
pub fn router(admin: Admin, auth: Auth) -> Router {
    let shared = Arc::new(Shared { admin, auth });
    let api = Router::new()
        .route("/status", get(api::status))
        .route("/projections", get(api::projections))
        .route("/projections/{name}/rebuild", post(api::rebuild))
        .route("/projections/{name}/pause", post(api::pause))
        .route("/projections/{name}/resume", post(api::resume))
        .route("/dead-letters", get(api::dead_letters))
        .route("/dead-letters/replay", post(api::replay_handler))
        .route("/dead-letters/{id}", get(api::dead_letter))
        .route("/dead-letters/{id}/replay", post(api::replay))
        .route("/dead-letters/{id}/discard", post(api::discard))
        .route("/sagas", get(api::sagas))
        .route("/sagas/{id}", get(api::saga))
        .route("/sagas/{id}/retry", post(api::retry))
        .route("/streams/{stream}", get(api::stream))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            api::require_token,
        ));
    Router::new()
        .route("/", get(page::show))
        .route("/login", post(page::login))
        .route("/logout", post(page::logout))
        .route("/dead-letters/{id}/replay", post(page::replay))
        .route("/dead-letters/{id}/discard", post(page::discard))
        .route("/projections/{name}/pause", post(page::pause))
        .route("/projections/{name}/resume", post(page::resume))
        .route("/projections/{name}/rebuild", post(page::rebuild))
        .route("/sagas/{id}/retry", post(page::retry))
        .nest("/api", api)
        .fallback(api::not_found)
        .with_state(shared)
}

/// What every handler gets.
struct Shared {
    admin: Admin,
    auth: Auth,
}

type State = axum::extract::State<Arc<Shared>>;

/// The HTTP status an admin error answers with.
fn status_of(error: &AdminError) -> StatusCode {
    match error {
        AdminError::UnknownProjection { .. }
        | AdminError::DeadLetterNotFound { .. }
        | AdminError::SagaNotFound { .. }
        | AdminError::StreamNotFound { .. } => StatusCode::NOT_FOUND,
        AdminError::NotPending { .. }
        | AdminError::Paused { .. }
        | AdminError::Owned { .. }
        | AdminError::HandlerNotRegistered { .. } => StatusCode::CONFLICT,
        AdminError::ReplayFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        AdminError::MissingArgument { .. }
        | AdminError::NotConfirmed
        | AdminError::Store(annals_core::Error::InvalidInput(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as the JSON API answers it: `{"error": "..."}`.
#[derive(Debug)]
enum ApiError {
    Admin(AdminError),
    BadRequest(String),
    Unauthorized,
    NotFound,
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        ApiError::Admin(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Admin(e) => (status_of(&e), e.to_string()),
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid admin token is required: `Authorization: Bearer <token>`".to_owned(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such admin route".to_owned()),
        };
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
