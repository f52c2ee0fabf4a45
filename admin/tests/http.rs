//! The HTTP admin through its router (no server): the JSON API's replay
//! and discard on Postgres, its 401s, and the status page's escaping, login
//! and forms. `tests/browser.rs` drives the page in a real browser.

mod support;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{World, TOKEN};
use tower::ServiceExt;

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, Response<Body>, String) {
    let response = app.clone().oneshot(request).await.expect("a response");
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, Response::from_parts(parts, Body::empty()), text)
}

fn api(method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(format!("/admin/api{path}"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"));
    match body {
        Some(body) => builder
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("a request")
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_the_api_and_the_page_answer_401() {
    let world = World::new().await;
    let app = world.app();

    for auth in [None, Some("Bearer not-the-token-at-all-no"), Some(TOKEN)] {
        let mut request = Request::get("/admin/api/status");
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        let (status, response, body) =
            send(&app, request.body(Body::empty()).expect("a request")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(
            json_of(&body)["error"]
                .as_str()
                .is_some_and(|e| e.contains("token")),
            "{body}"
        );
    }
    let request = Request::post("/admin/api/dead-letters/1/replay")
        .body(Body::empty())
        .expect("a request");
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
    // the page's session cookie does not open the API
    let (_, login, _) = send(&app, login_request(TOKEN)).await;
    let request = Request::get("/admin/api/status")
        .header(COOKIE, session_cookie(&login))
        .body(Body::empty())
        .expect("a request");
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);

    // the page: a login form, with 401; its forms refuse to act
    let (status, _, body) = send(&app, page_request(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("name=\"token\""), "{body}");
    assert!(!body.contains("Projections"), "{body}");
    let id = world.park("note-1", "hello").await;
    let request = Request::post(format!("/admin/dead-letters/{id}/replay"))
        .body(Body::empty())
        .expect("a request");
    assert_eq!(send(&app, request).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, body) = send(&app, login_request("a-wrong-token-of-some-length")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("not the admin token"), "{body}");
    assert_eq!(
        pending(&app).await.len(),
        1,
        "nothing was replayed without the token"
    );

    // with the token
    let (status, _, body) = send(&app, api("GET", "/status", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json_of(&body)["dead_letters_pending"], 1, "{body}");
}

async fn pending(app: &axum::Router) -> Vec<Value> {
    let (status, _, body) = send(app, api("GET", "/dead-letters?status=pending", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    json_of(&body).as_array().cloned().expect("an array")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_replays_and_discards_dead_letters() {
    let world = World::new().await;
    let app = world.app();
    let replayed = world.park("note-1", "first").await;
    let discarded = world.park("note-2", "second").await;
    assert_eq!(pending(&app).await.len(), 2);

    let (status, _, body) =
        send(&app, api("GET", &format!("/dead-letters/{replayed}"), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown = json_of(&body);
    assert_eq!(shown["dead_letter"]["stream_id"], "note-1");
    assert_eq!(shown["event"]["payload"], json!("first"), "{body}");

    let (status, _, body) = send(
        &app,
        api("POST", &format!("/dead-letters/{replayed}/replay"), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json_of(&body)["outcome"], "resolved");
    // not twice
    let (status, _, body) = send(
        &app,
        api("POST", &format!("/dead-letters/{replayed}/replay"), None),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("resolved")),
        "{body}"
    );

    // a discard needs a reason
    let (status, _, body) = send(
        &app,
        api("POST", &format!("/dead-letters/{discarded}/discard"), None),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(json_of(&body)["error"].is_string(), "{body}");
    let reason = json!({"reason": "a test note"});
    let (status, _, body) = send(
        &app,
        api(
            "POST",
            &format!("/dead-letters/{discarded}/discard"),
            Some(reason.clone()),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"id": discarded, "reason": "a test note"})
    );
    let (status, _, _) = send(
        &app,
        api(
            "POST",
            &format!("/dead-letters/{discarded}/discard"),
            Some(reason),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    assert!(pending(&app).await.is_empty());
    let (_, _, body) = send(&app, api("GET", "/dead-letters?status=all", None)).await;
    let statuses: Vec<Value> = json_of(&body)
        .as_array()
        .expect("an array")
        .iter()
        .map(|l| l["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("resolved"), json!("discarded")], "{body}");

    // what does not exist, or is malformed
    for (method, path, expected) in [
        (
            "POST",
            "/dead-letters/999999/replay".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/dead-letters/not-a-number".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/projections/nobody/pause".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            format!("/sagas/{}", uuid::Uuid::nil()),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/streams/no-such-stream".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/no-such-route".to_owned(), StatusCode::NOT_FOUND),
    ] {
        let (status, _, body) = send(&app, api(method, &path, None)).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(
            json_of(&body)["error"].is_string(),
            "{method} {path}: {body}"
        );
    }

    // the other operations answer too
    let (status, _, body) = send(&app, api("GET", "/streams/note-1", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json_of(&body)[0]["payload"], json!("first"));
    let (status, _, body) = send(&app, api("POST", "/projections/notes/pause", None)).await;
    assert_eq!(
        (status, json_of(&body)["changed"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    let (_, _, body) = send(&app, api("GET", "/projections", None)).await;
    assert_eq!(json_of(&body)[0]["paused"], true, "{body}");
    let (status, _, body) = send(&app, api("POST", "/projections/notes/rebuild", None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "a paused projection: {body}");
    let (status, _, _) = send(&app, api("POST", "/projections/notes/resume", None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(&app, api("GET", "/sagas", None)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
}

fn page_request(cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/admin");
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.body(Body::empty()).expect("a request")
}

fn login_request(token: &str) -> Request<Body> {
    Request::post("/admin/login")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .expect("a request")
}

/// The `name=value` of the session cookie a login response sets.
fn session_cookie(login: &Response<Body>) -> String {
    let set = login.headers()[SET_COOKIE].to_str().expect("ASCII");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().expect("name=value").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_escapes_what_the_database_holds() {
    let world = World::new().await;
    let app = world.app();
    let hostile = "<script>alert('owned')</script>";
    let id = world.park(&format!("note-{hostile}"), hostile).await;

    let (status, login, body) = send(&app, login_request(TOKEN)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(login.headers()[LOCATION], "/admin");
    let cookie = session_cookie(&login);
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");

    let (status, response, body) = send(&app, page_request(Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII");
    assert!(
        policy.contains("default-src 'none'"),
        "no script may run: {policy}"
    );
    assert!(!body.contains("<script"), "unescaped: {body}");
    assert!(
        body.contains("note-&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"),
        "the stream id, escaped: {body}"
    );
    assert!(
        body.contains("cannot file the note &lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"),
        "the error, escaped: {body}"
    );
    assert!(
        body.contains(&format!("action=\"/admin/dead-letters/{id}/replay\"")),
        "{body}"
    );

    // a form posts, then redirects back with a fixed notice
    let request = Request::post(format!("/admin/dead-letters/{id}/replay"))
        .header(COOKIE, &cookie)
        .body(Body::empty())
        .expect("a request");
    let (status, response, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert_eq!(location, format!("/admin?done=replayed&id={id}"));
    let request = Request::get(&location)
        .header(COOKIE, &cookie)
        .body(Body::empty())
        .expect("a request");
    let (_, _, body) = send(&app, request).await;
    assert!(
        body.contains(&format!("Dead letter {id} replayed: resolved.")),
        "{body}"
    );
    assert!(body.contains("No pending dead letters."), "{body}");

    // an action that fails shows the page with the error, escaped
    let request = Request::post(format!("/admin/dead-letters/{id}/discard"))
        .header(COOKIE, &cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("reason=%3Cb%3Elate%3C%2Fb%3E"))
        .expect("a request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains(&format!("dead letter {id} is resolved, not pending")),
        "{body}"
    );

    // logging out clears the cookie
    let request = Request::post("/admin/logout")
        .body(Body::empty())
        .expect("a request");
    let (status, response, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cleared = response.headers()[SET_COOKIE].to_str().expect("ASCII");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_applications_own_auth_the_router_checks_nothing() {
    let world = World::new().await;
    let app = axum::Router::new().nest(
        "/ops",
        annals::admin::http::router(
            world.admin.clone(),
            annals::admin::http::Auth::application(),
        ),
    );
    let request = Request::get("/ops/api/status")
        .body(Body::empty())
        .expect("a request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = Request::get("/ops").body(Body::empty()).expect("a request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("Log out"), "nothing to log out of: {body}");
    assert!(
        body.contains("action=\"/ops/projections/notes/pause\""),
        "{body}"
    );
}

/// The page's Rebuild button: only with its confirmation box ticked (the
/// browser requires it, the server checks it), then the projection is
/// rebuilt and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_rebuilds_a_projection_once_confirmed() {
    let world = World::new().await;
    let app = world.app();
    let (_, login, _) = send(&app, login_request(TOKEN)).await;
    let cookie = session_cookie(&login);
    let (_, _, body) = send(&app, page_request(Some(&cookie))).await;
    assert!(
        body.contains("action=\"/admin/projections/notes/rebuild\"")
            && body.contains("name=\"confirm\" value=\"yes\" required"),
        "{body}"
    );
    let rebuild = |form: &'static str| {
        Request::post("/admin/projections/notes/rebuild")
            .header(COOKIE, &cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .expect("a request")
    };
    let (status, _, body) = send(&app, rebuild("")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("tick the box to confirm"), "{body}");
    let (status, response, _) = send(&app, rebuild("confirm=yes")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = response.headers()[LOCATION]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert_eq!(location, "/admin?done=rebuilt&id=notes");
    let request = Request::get(&location)
        .header(COOKIE, &cookie)
        .body(Body::empty())
        .expect("a request");
    let (_, _, body) = send(&app, request).await;
    assert!(
        body.contains("Projection notes rebuilt from the whole log."),
        "{body}"
    );
}

/// `?tenant=` picks the tenant of an API call: each tenant's dead letters
/// are listed apart, one tenant's call cannot discard another's, and an
/// invalid tenant id is a 400 that names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_works_on_the_tenant_of_the_call() {
    use annals::{EventStoreExt as _, ExpectedVersion, Metadata, ProjectionRunner};
    use std::sync::atomic::Ordering;

    let world = World::new().await;
    let app = world.app();
    let default_letter = world.park("note-1", "in default").await;
    // a dead letter of tenant clinic-b, parked by clinic-b's own runner
    let b = world.store.tenant("clinic-b").expect("a tenant");
    world.notes.broken.store(true, Ordering::SeqCst);
    b.append_events(
        "note-1",
        ExpectedVersion::Any,
        &[support::NoteEvent::Written("in b".into())],
        &Metadata::new(),
    )
    .await
    .expect("an append");
    let b_runner = ProjectionRunner::new(
        b,
        annals::postgres::PgProjectionStore::new(world.db.pool().clone()),
        world.notes.clone(),
    )
    .retry(annals::RetryPolicy::new(1).initial_delay(std::time::Duration::from_millis(1)));
    assert_eq!(
        b_runner
            .catch_up()
            .await
            .expect("b's catch-up")
            .events_parked,
        1
    );
    world.notes.broken.store(false, Ordering::SeqCst);

    let listed = |tenant: &'static str| {
        let app = app.clone();
        async move {
            let (status, _, body) = send(
                &app,
                api(
                    "GET",
                    &format!("/dead-letters?status=pending{tenant}"),
                    None,
                ),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            json_of(&body).as_array().cloned().expect("an array")
        }
    };
    let in_default = listed("").await;
    let in_b = listed("&tenant=clinic-b").await;
    assert_eq!(in_default.len(), 1);
    assert_eq!(in_default[0]["id"], json!(default_letter));
    assert_eq!(in_b.len(), 1);
    assert_ne!(in_b[0]["id"], json!(default_letter), "b's own dead letter");
    assert!(listed("&tenant=clinic-c").await.is_empty());

    // clinic-c's call does not reach b's dead letter
    let b_letter = in_b[0]["id"].as_u64().expect("an id");
    let (status, _, body) = send(
        &app,
        api(
            "POST",
            &format!("/dead-letters/{b_letter}/discard?tenant=clinic-c"),
            Some(json!({"reason": "not mine"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(listed("&tenant=clinic-b").await.len(), 1, "still pending");

    let (status, _, body) = send(&app, api("GET", "/dead-letters?tenant=clinic%201", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("invalid tenant"), "{body}");
}
