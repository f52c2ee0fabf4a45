//! The status page: server-rendered HTML, plain forms that post and
//! redirect back, every value from the database escaped.

use std::fmt::{self, Display, Write};

use annals_core::dead_letter::DeadLetter;
use annals_core::saga::SagaRecord;
use axum::extract::rejection::{FormRejection, NestedPathRejection, PathRejection};
use axum::extract::{NestedPath, Path, Query};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::auth::SESSION_COOKIE;
use super::{status_of, State};
use crate::cli::StatusFilter;
use crate::commands::status::Status;
use crate::commands::{dead_letters, projections, sagas, status};
use crate::AdminError;

/// How many pending dead letters and unfinished sagas the page lists.
const PAGE_ROWS: usize = 100;

/// How long a login lasts, in seconds.
const SESSION_SECONDS: u32 = 8 * 60 * 60;

/// Where the router is mounted (`""` at the root), from axum's nesting.
struct Base(String);

impl Base {
    fn from(nested: Result<NestedPath, NestedPathRejection>) -> Base {
        Base(
            nested
                .map(|n| n.as_str().trim_end_matches('/').to_owned())
                .unwrap_or_default(),
        )
    }

    /// The page's own URL.
    fn page(&self) -> &str {
        if self.0.is_empty() {
            "/"
        } else {
            &self.0
        }
    }
}

/// Text escaped for HTML (element content and quoted attribute values).
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A URL path segment or query value, percent-encoded.
fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn time(t: Option<DateTime<Utc>>) -> String {
    crate::output::time(t)
}

/// What the page may load and who may frame it: nothing but its own
/// inline style and forms posting to itself (no script runs, even one
/// that escaped the escaping; no other site can frame the buttons).
const POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                      frame-ancestors 'none'; base-uri 'none'";

/// A page: not cached (it shows live state, or a form), under [`POLICY`].
fn no_store(status: StatusCode, html: String) -> Response {
    let headers = [
        (CACHE_CONTROL, "no-store"),
        (CONTENT_SECURITY_POLICY, POLICY),
        (X_FRAME_OPTIONS, "DENY"),
    ];
    (status, headers, Html(html)).into_response()
}

fn see_other(location: String, cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response();
    if let Some(cookie) = cookie.and_then(|c| c.parse().ok()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}\
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.error{color:#a00;white-space:pre-wrap;max-width:40rem}\
.notice{background:#e8f5e9;padding:.5rem}.problem{background:#fdecea;padding:.5rem}\
.bad{color:#a00;font-weight:bold}.ok{color:#080}form{display:inline}\
header{display:flex;gap:1rem;align-items:baseline}";

fn head(h: &mut String, title: &str) -> fmt::Result {
    write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        Esc(title)
    )
}

/// The login form, answered with 401.
fn login_page(base: &Base, problem: Option<&str>) -> Response {
    let render = || -> Result<String, fmt::Error> {
        let mut h = String::new();
        head(&mut h, "annals admin: log in")?;
        h.push_str("<h1>annals admin</h1>");
        if let Some(problem) = problem {
            write!(h, "<p class=\"problem\">{}</p>", Esc(problem))?;
        }
        write!(
            h,
            "<form method=\"post\" action=\"{}/login\">\
             <label>Admin token <input type=\"password\" name=\"token\" id=\"token\" \
             autocomplete=\"current-password\" required autofocus></label> \
             <button type=\"submit\" id=\"login\">Log in</button></form></body></html>",
            Esc(&base.0)
        )?;
        Ok(h)
    };
    match render() {
        Ok(html) => no_store(StatusCode::UNAUTHORIZED, html),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The message a redirect after an action carries (`?done=replayed&id=3`):
/// a fixed sentence per action, never text from the URL but the id.
#[derive(Deserialize)]
pub(super) struct Done {
    done: Option<String>,
    id: Option<String>,
}

impl Done {
    fn message(&self) -> Option<String> {
        let id = self.id.as_deref().unwrap_or("?");
        Some(match self.done.as_deref()? {
            "replayed" => format!("Dead letter {id} replayed: resolved."),
            "discarded" => format!("Dead letter {id} discarded."),
            "paused" => format!("Projection {id} paused."),
            "resumed" => format!("Projection {id} resumed."),
            "rebuilt" => format!("Projection {id} rebuilt from the whole log."),
            "retried" => format!("Saga {id}: its undelivered commands are due now."),
            _ => return None,
        })
    }
}

pub(super) async fn show(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    done: Result<Query<Done>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let base = Base::from(nested);
    if !state.auth.page_ok(&headers) {
        return login_page(&base, None);
    }
    let notice = done.ok().and_then(|Query(d)| d.message());
    page(&state, &base, StatusCode::OK, notice.as_deref(), None).await
}

/// Renders the page with the admin's current state.
async fn page(
    state: &super::Shared,
    base: &Base,
    code: StatusCode,
    notice: Option<&str>,
    problem: Option<&str>,
) -> Response {
    let admin = &state.admin;
    let loaded = async {
        let status = status::report(admin).await?;
        let letters = dead_letters::list(admin, None, StatusFilter::Pending, 0, PAGE_ROWS).await?;
        let sagas = sagas::list(admin, None, PAGE_ROWS).await?;
        Ok::<_, AdminError>((status, letters, sagas))
    }
    .await;
    let (status, letters, sagas) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            let mut h = String::new();
            let rendered = head(&mut h, "annals admin").and_then(|()| {
                write!(
                    h,
                    "<h1>annals admin</h1><p class=\"problem\">The admin could not read its state: {}</p></body></html>",
                    Esc(&e.to_string())
                )
            });
            return match rendered {
                Ok(()) => no_store(status_of(&e), h),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
        }
    };
    let view = View {
        base,
        logout: state.auth.checks(),
        notice,
        problem,
        status: &status,
        letters: &letters,
        sagas: &sagas,
    };
    match view.render() {
        Ok(html) => no_store(code, html),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What the page shows.
struct View<'a> {
    base: &'a Base,
    logout: bool,
    notice: Option<&'a str>,
    problem: Option<&'a str>,
    status: &'a Status,
    letters: &'a [DeadLetter],
    sagas: &'a [SagaRecord],
}

impl View<'_> {
    fn render(&self) -> Result<String, fmt::Error> {
        let mut h = String::new();
        let base = Esc(&self.base.0);
        let s = self.status;
        head(&mut h, "annals admin")?;
        write!(
            h,
            "<header><h1>annals admin</h1><span>checked at {} UTC</span>\
             <span id=\"health\" class=\"{}\">{}</span>",
            time(Some(s.checked_at)),
            if s.healthy { "ok" } else { "bad" },
            if s.healthy { "healthy" } else { "unhealthy" },
        )?;
        if self.logout {
            write!(
                h,
                "<form method=\"post\" action=\"{base}/logout\"><button type=\"submit\">Log out</button></form>"
            )?;
        }
        h.push_str("</header>");
        if let Some(notice) = self.notice {
            write!(h, "<p class=\"notice\" id=\"notice\">{}</p>", Esc(notice))?;
        }
        if let Some(problem) = self.problem {
            write!(
                h,
                "<p class=\"problem\" id=\"problem\">{}</p>",
                Esc(problem)
            )?;
        }

        h.push_str(
            "<h2>Projections</h2><table id=\"projections\"><tr><th>Projection</th><th>Status</th>\
             <th>Checkpoint</th><th>Last event</th><th>Lag</th><th>Behind</th>\
             <th>Dead letters</th><th>Health</th><th></th></tr>",
        );
        for row in &s.projections {
            let p = &row.health;
            let name = url_part(&p.name);
            write!(
                h,
                "<tr><td>{}{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td>",
                Esc(&p.name),
                if row.registered { "" } else { " (unregistered)" },
                row.status(),
                p.position.transaction_id,
                p.position.position,
                time(p.last_event_at),
                p.lag_seconds,
                p.events_behind,
                p.dead_letters_pending,
            )?;
            match (&p.reason, p.stale) {
                (Some(reason), _) => write!(h, "<td class=\"bad\">{}</td>", Esc(reason))?,
                (None, true) => h.push_str("<td class=\"bad\">stale</td>"),
                (None, false) => h.push_str("<td class=\"ok\">ok</td>"),
            }
            let (action, label) = if row.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            write!(
                h,
                "<td><form method=\"post\" action=\"{base}/projections/{}/{action}\">\
                 <button type=\"submit\">{label}</button></form>",
                Esc(&name)
            )?;
            if row.registered {
                // a rebuild clears the read model: the browser asks for the
                // box to be ticked first (no script needed), the server
                // checks it too
                write!(
                    h,
                    "<form method=\"post\" action=\"{base}/projections/{}/rebuild\">\
                     <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> \
                     clear and replay</label> <button type=\"submit\">Rebuild</button></form>",
                    Esc(&name)
                )?;
            }
            h.push_str("</td></tr>");
        }
        h.push_str("</table>");

        let z = &s.horizon;
        write!(
            h,
            "<h2>Horizon</h2><p id=\"horizon\">Transaction {}; held back {:.1} s (oldest open \
             transaction since {}); {} committed event(s) held back{}.</p>",
            z.xmin,
            z.lag_seconds,
            time(z.oldest_open_since),
            z.events_held_back,
            if s.horizon_stale {
                " <span class=\"bad\">stale</span>"
            } else {
                ""
            },
        )?;

        write!(
            h,
            "<h2>Dead letters pending: {}</h2>",
            s.dead_letters_pending
        )?;
        if self.letters.is_empty() {
            h.push_str("<p id=\"no-dead-letters\">No pending dead letters.</p>");
        } else {
            h.push_str(
                "<table id=\"dead-letters\"><tr><th>Id</th><th>Handler</th><th>Stream</th>\
                 <th>Type</th><th>Position</th><th>Attempts</th><th>Last failed</th>\
                 <th>Error</th><th></th></tr>",
            );
            for l in self.letters {
                write!(
                    h,
                    "<tr id=\"dead-letter-{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td><td>\
                     <form method=\"post\" action=\"{base}/dead-letters/{id}/replay\">\
                     <button type=\"submit\" id=\"replay-{id}\">Replay</button></form> \
                     <form method=\"post\" action=\"{base}/dead-letters/{id}/discard\">\
                     <input name=\"reason\" placeholder=\"reason\" required> \
                     <button type=\"submit\" id=\"discard-{id}\">Discard</button></form>\
                     </td></tr>",
                    Esc(&l.handler),
                    Esc(&l.stream_id),
                    Esc(&l.event_type),
                    l.event_position,
                    l.attempts,
                    time(Some(l.last_failed_at)),
                    Esc(&l.error),
                    id = l.id,
                )?;
            }
            h.push_str("</table>");
            if s.dead_letters_pending > self.letters.len() as u64 {
                h.push_str("<p>(more: see the JSON API or `admin dead-letters list`)</p>");
            }
        }

        let in_flight: u64 = s.sagas_in_flight.iter().map(|c| c.count).sum();
        write!(h, "<h2>Sagas in flight: {in_flight}</h2>")?;
        if !s.sagas_in_flight.is_empty() {
            h.push_str(
                "<table id=\"saga-counts\"><tr><th>Type</th><th>Status</th><th>Count</th></tr>",
            );
            for c in &s.sagas_in_flight {
                write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    Esc(&c.saga_type),
                    c.status,
                    c.count
                )?;
            }
            h.push_str("</table>");
        }
        if !self.sagas.is_empty() {
            h.push_str(
                "<table id=\"sagas\"><tr><th>Saga</th><th>Type</th><th>Correlation</th>\
                 <th>State</th><th>Status</th><th>Step</th><th>Retries</th><th>Updated</th>\
                 <th>Deadline</th><th>Error</th><th></th></tr>",
            );
            for g in self.sagas {
                write!(
                    h,
                    "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td><td>\
                     <form method=\"post\" action=\"{base}/sagas/{id}/retry\">\
                     <button type=\"submit\">Retry</button></form></td></tr>",
                    Esc(&g.saga_type),
                    Esc(&g.correlation_id),
                    Esc(&g.state),
                    g.status.as_str(),
                    g.current_step,
                    g.retry_count,
                    time(Some(g.updated_at)),
                    time(g.deadline_at),
                    Esc(g.error_message.as_deref().unwrap_or("")),
                    id = g.saga_id,
                )?;
            }
            h.push_str("</table>");
        }
        h.push_str("</body></html>");
        Ok(h)
    }
}

#[derive(Deserialize)]
pub(super) struct Login {
    token: String,
}

pub(super) async fn login(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    form: Result<Form<Login>, FormRejection>,
) -> Response {
    let base = Base::from(nested);
    let Some(session) = state.auth.session() else {
        return see_other(base.page().to_owned(), None);
    };
    match form {
        Ok(Form(Login { token })) if state.auth.accepts(&token) => see_other(
            base.page().to_owned(),
            Some(format!(
                "{SESSION_COOKIE}={session}; Path={}; Max-Age={SESSION_SECONDS}; HttpOnly; Secure; SameSite=Strict",
                base.page()
            )),
        ),
        _ => login_page(&base, Some("That is not the admin token.")),
    }
}

pub(super) async fn logout(nested: Result<NestedPath, NestedPathRejection>) -> Response {
    let base = Base::from(nested);
    let clear = format!(
        "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
        base.page()
    );
    see_other(base.page().to_owned(), Some(clear))
}

/// Runs a page action for an authenticated operator: redirects back with
/// its notice, or shows the page with the error.
async fn act<F>(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: &HeaderMap,
    action: F,
) -> Response
where
    F: std::future::Future<Output = Result<(&'static str, String), Failure>>,
{
    let base = Base::from(nested);
    if !state.auth.page_ok(headers) {
        return login_page(&base, None);
    }
    match action.await {
        Ok((done, id)) => see_other(
            format!("{}?done={done}&id={}", base.page(), url_part(&id)),
            None,
        ),
        Err(Failure::Admin(e)) => {
            page(&state, &base, status_of(&e), None, Some(&e.to_string())).await
        }
        Err(Failure::Malformed(e)) => {
            page(&state, &base, StatusCode::BAD_REQUEST, None, Some(&e)).await
        }
    }
}

/// Why a page action failed.
enum Failure {
    Admin(AdminError),
    /// A malformed path or form (axum's rejection, as text).
    Malformed(String),
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure::Admin(e)
    }
}

fn malformed(rejection: impl Display) -> Failure {
    Failure::Malformed(rejection.to_string())
}

pub(super) async fn replay(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(id) = id.map_err(malformed)?;
        dead_letters::replay_one(&admin, id).await?;
        Ok(("replayed", id.to_string()))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct Reason {
    reason: String,
}

pub(super) async fn discard(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    id: Result<Path<u64>, PathRejection>,
    form: Result<Form<Reason>, FormRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(id) = id.map_err(malformed)?;
        let Form(Reason { reason }) = form.map_err(malformed)?;
        dead_letters::discard(&admin, id, &reason).await?;
        Ok(("discarded", id.to_string()))
    })
    .await
}

pub(super) async fn pause(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(name) = name.map_err(malformed)?;
        projections::pause(&admin, &name).await?;
        Ok(("paused", name))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct Confirm {
    #[serde(default)]
    confirm: Option<String>,
}

/// Rebuilds a projection from the page: only with the confirmation box
/// ticked. The rebuild runs inside the request (as `POST
/// api/projections/{name}/rebuild` does).
pub(super) async fn rebuild(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    form: Result<Form<Confirm>, FormRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(name) = name.map_err(malformed)?;
        let Form(Confirm { confirm }) = form.map_err(malformed)?;
        if confirm.as_deref() != Some("yes") {
            return Err(malformed(format!(
                "rebuilding `{name}` clears its read model: tick the box to confirm"
            )));
        }
        projections::rebuild(&admin, &name, false).await?;
        Ok(("rebuilt", name))
    })
    .await
}

pub(super) async fn resume(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(name) = name.map_err(malformed)?;
        projections::resume(&admin, &name).await?;
        Ok(("resumed", name))
    })
    .await
}

pub(super) async fn retry(
    state: State,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
    id: Result<Path<Uuid>, PathRejection>,
) -> Response {
    let admin = state.admin.clone();
    act(state, nested, &headers, async move {
        let Path(id) = id.map_err(malformed)?;
        sagas::retry(&admin, id).await?;
        Ok(("retried", id.to_string()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc("<script>alert('x')</script> & \"y\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(url_part("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn a_notice_is_a_fixed_sentence() {
        let done = Done {
            done: Some("replayed".into()),
            id: Some("7".into()),
        };
        assert_eq!(
            done.message().as_deref(),
            Some("Dead letter 7 replayed: resolved.")
        );
        let unknown = Done {
            done: Some("<b>hi</b>".into()),
            id: None,
        };
        assert_eq!(unknown.message(), None);
    }
}
