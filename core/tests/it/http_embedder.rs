//! The HTTP embedder against a local HTTP server started by each test.
// Tests may unwrap; clippy does not treat `tokio::test` bodies as tests.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals_core::knowledge::{ApiKey, EmbedError, Embedder, HttpEmbedder, HttpEmbedderConfig};
use annals_core::RetryPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers to one request.
#[derive(Clone)]
enum Reply {
    /// Embeddings of `dims` dimensions for each input, vector i filled with
    /// i + 1, listed in reverse order (clients must sort by index).
    Embeddings { dims: usize },
    /// A status and a body.
    Raw {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: String,
    },
    /// Nothing for this long (then the connection closes).
    Stall(Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: serde_json::Value,
}

struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Starts a server on 127.0.0.1 that answers requests with `replies` in
/// order (the last one repeats).
async fn server(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let replies = replies.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut socket).await else {
                    return;
                };
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let authorization = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_owned());
                let body: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                log.lock().unwrap().push(Seen {
                    path,
                    authorization,
                    body: body.clone(),
                });
                let reply = {
                    let mut q = replies.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap()
                    }
                };
                let (status, headers, text) = match reply {
                    Reply::Stall(d) => {
                        tokio::time::sleep(d).await;
                        return;
                    }
                    Reply::Raw {
                        status,
                        headers,
                        body,
                    } => (status, headers, body),
                    Reply::Embeddings { dims } => {
                        let n = body["input"].as_array().map_or(0, Vec::len);
                        let data: Vec<serde_json::Value> = (0..n)
                            .rev()
                            .map(|i| {
                                serde_json::json!({
                                    "object": "embedding",
                                    "index": i,
                                    "embedding": vec![(i + 1) as f32; dims],
                                })
                            })
                            .collect();
                        let model = body["model"].clone();
                        (
                            200,
                            vec![],
                            serde_json::json!({ "object": "list", "data": data, "model": model })
                                .to_string(),
                        )
                    }
                };
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    text.len()
                );
                for (k, v) in headers {
                    response.push_str(&format!("{k}: {v}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&text);
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Server {
        base_url: format!("http://{addr}"),
        seen,
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..].to_vec()))
}

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts)
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(50))
        .jitter(0.0)
}

const KEY: &str = "sk-test-secret-do-not-log";

fn config(server: &Server, dims: usize) -> HttpEmbedderConfig {
    HttpEmbedderConfig::new(&server.base_url, "test-model", dims)
        .api_key(ApiKey::new(KEY))
        .retry(fast_retries(3))
        .timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn embeds_in_batches_with_the_key_and_model() {
    let server = server(vec![Reply::Embeddings { dims: 3 }]).await;
    let embedder = HttpEmbedder::new(config(&server, 3).batch_size(2)).unwrap();
    assert_eq!((embedder.model(), embedder.dimensions()), ("test-model", 3));
    let vectors = embedder.embed(&["a", "b", "c", "d", "e"]).await.unwrap();
    // per batch, vector i is filled with i + 1: order kept despite the
    // server listing them in reverse
    let firsts: Vec<f32> = vectors.iter().map(|v| v[0]).collect();
    assert_eq!(firsts, vec![1.0, 2.0, 1.0, 2.0, 1.0]);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "5 texts in batches of 2");
    for s in &seen {
        assert_eq!(s.path, "/v1/embeddings");
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(s.body["model"], "test-model");
        assert!(s.body.get("dimensions").is_none());
    }
    assert_eq!(seen[0].body["input"], serde_json::json!(["a", "b"]));
    assert_eq!(seen[2].body["input"], serde_json::json!(["e"]));
    // no call for nothing
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
    assert_eq!(server.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_429_is_retried_then_succeeds() {
    let server = server(vec![
        Reply::Raw {
            status: 429,
            headers: vec![("retry-after", "1")],
            body: "{}".into(),
        },
        Reply::Embeddings { dims: 2 },
    ])
    .await;
    // the server's Retry-After (1 s) is honoured: longer than the backoff
    let patient = RetryPolicy::new(3)
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_secs(5))
        .jitter(0.0);
    let embedder = HttpEmbedder::new(config(&server, 2).retry(patient)).unwrap();
    let started = std::time::Instant::now();
    let v = embedder.embed(&["x"]).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(v, vec![vec![1.0, 1.0]]);
    assert_eq!(server.seen.lock().unwrap().len(), 2);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn a_retry_after_longer_than_the_policy_allows_is_capped() {
    let server = server(vec![
        Reply::Raw {
            status: 429,
            headers: vec![("retry-after", "3600")],
            body: "{}".into(),
        },
        Reply::Embeddings { dims: 2 },
    ])
    .await;
    // fast_retries caps every delay at 50 ms
    let embedder = HttpEmbedder::new(config(&server, 2)).unwrap();
    let started = std::time::Instant::now();
    embedder.embed(&["x"]).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_secs(5),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn failures_are_typed_errors() {
    // rate limited on every attempt
    let server_429 = server(vec![Reply::Raw {
        status: 429,
        headers: vec![("retry-after", "7")],
        body: "slow down".into(),
    }])
    .await;
    let err = HttpEmbedder::new(config(&server_429, 2))
        .unwrap()
        .embed(&["x"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::RateLimited { attempts: 3, retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{err:?}"
    );
    assert!(err.is_transient());

    // 500: retried, then reported with the body
    let server_500 = server(vec![Reply::Raw {
        status: 500,
        headers: vec![],
        body: "model overloaded".into(),
    }])
    .await;
    let err = HttpEmbedder::new(config(&server_500, 2))
        .unwrap()
        .embed(&["x"])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Status { status: 500, attempts: 3, body } if body == "model overloaded"),
        "{err:?}"
    );
    assert_eq!(server_500.seen.lock().unwrap().len(), 3);

    // 400: the request is wrong, not retried
    let server_400 = server(vec![Reply::Raw {
        status: 400,
        headers: vec![],
        body: "{\"error\":\"bad input\"}".into(),
    }])
    .await;
    let err = HttpEmbedder::new(config(&server_400, 2))
        .unwrap()
        .embed(&["x"])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::Status {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(server_400.seen.lock().unwrap().len(), 1);

    // timeout
    let stall = server(vec![Reply::Stall(Duration::from_secs(3))]).await;
    let started = std::time::Instant::now();
    let err = HttpEmbedder::new(
        config(&stall, 2)
            .timeout(Duration::from_millis(200))
            .retry(fast_retries(2)),
    )
    .unwrap()
    .embed(&["x"])
    .await
    .unwrap_err();
    assert!(
        matches!(err, EmbedError::Timeout { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeouts took {:?}",
        started.elapsed()
    );

    // malformed bodies: not retried
    for (body, what) in [
        ("not json at all".to_owned(), "malformed"),
        (
            r#"{"data":[{"index":0,"embedding":[1,2,3]}]}"#.to_owned(),
            "dimensions",
        ),
        (r#"{"data":[]}"#.to_owned(), "count"),
        (
            r#"{"data":[{"index":5,"embedding":[1,2]}]}"#.to_owned(),
            "malformed",
        ),
    ] {
        let s = server(vec![Reply::Raw {
            status: 200,
            headers: vec![],
            body,
        }])
        .await;
        let err = HttpEmbedder::new(config(&s, 2))
            .unwrap()
            .embed(&["x"])
            .await
            .unwrap_err();
        let ok = match what {
            "malformed" => matches!(err, EmbedError::MalformedResponse { .. }),
            "dimensions" => matches!(
                err,
                EmbedError::Dimensions {
                    expected: 2,
                    actual: 3,
                    ..
                }
            ),
            _ => matches!(
                err,
                EmbedError::Count {
                    sent: 1,
                    received: 0
                }
            ),
        };
        assert!(ok, "{what}: {err:?}");
        assert_eq!(s.seen.lock().unwrap().len(), 1, "{what} was retried");
    }

    // nothing listening
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg =
        HttpEmbedderConfig::new(format!("http://127.0.0.1:{port}"), "m", 2).retry(fast_retries(2));
    let err = HttpEmbedder::new(cfg)
        .unwrap()
        .embed(&["x"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::Transport { attempts: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_key_is_never_shown_and_bad_config_is_refused() {
    let server = server(vec![Reply::Raw {
        status: 401,
        headers: vec![],
        body: "invalid key".into(),
    }])
    .await;
    let cfg = config(&server, 2);
    assert!(!format!("{cfg:?}").contains(KEY));
    let embedder = HttpEmbedder::new(cfg).unwrap();
    assert!(!format!("{embedder:?}").contains(KEY));
    let err = embedder.embed(&["x"]).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(KEY));
    // a base URL ending in /v1 is not doubled; dimensions sent on request
    let s = crate::http_embedder::server(vec![Reply::Embeddings { dims: 2 }]).await;
    let e = HttpEmbedder::new(
        HttpEmbedderConfig::new(format!("{}/v1/", s.base_url), "m", 2).send_dimensions(true),
    )
    .unwrap();
    e.embed(&["x"]).await.unwrap();
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(seen[0].body["dimensions"], 2);
    assert_eq!(seen[0].authorization, None);
    for bad in [
        HttpEmbedderConfig::new("ftp://x", "m", 2),
        HttpEmbedderConfig::new("http://x", " ", 2),
        HttpEmbedderConfig::new("http://x", "m", 0),
        HttpEmbedderConfig::new("http://x", "m", 2).batch_size(0),
    ] {
        let err = HttpEmbedder::new(bad).unwrap_err();
        assert!(matches!(err, EmbedError::Config(_)), "{err:?}");
    }
    // configuration from JSON (durations in milliseconds)
    let cfg: HttpEmbedderConfig = serde_json::from_value(serde_json::json!({
        "base_url": "https://api.openai.com",
        "model": "text-embedding-3-small",
        "dimensions": 1536,
        "api_key": "sk-from-config",
        "timeout": 2500
    }))
    .unwrap();
    assert_eq!(
        (cfg.timeout, cfg.batch_size),
        (Duration::from_millis(2500), 100)
    );
    assert!(!format!("{cfg:?}").contains("sk-from-config"));
}
