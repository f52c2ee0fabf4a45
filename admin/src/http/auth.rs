//! Who may use the HTTP admin: a bearer token compared in constant time,
//! or the application's own authentication in front of the router.

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The name of the status page's session cookie.
pub(super) const SESSION_COOKIE: &str = "annals_admin_session";

/// How the HTTP admin authenticates requests (see the
/// [module docs](super)).
///
/// ```
/// use annals::admin::http::Auth;
///
/// assert!(Auth::bearer("a-long-random-secret-token").is_ok());
/// assert!(Auth::bearer("short").is_err());
/// ```
#[derive(Clone)]
pub struct Auth(Option<Token>);

#[derive(Clone)]
struct Token {
    /// SHA-256 of the token: what a bearer token is compared with.
    digest: [u8; 32],
    /// The session cookie's value: a hash derived from the token.
    session: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Auth::Bearer(..)",
            None => "Auth::Application",
        })
    }
}

/// The token given to [`Auth::bearer`] is too short to be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the admin token must be at least {} characters long (got {length}); generate a random one",
    Auth::MIN_TOKEN_LENGTH
)]
pub struct ShortToken {
    /// The length of the token given, in characters.
    pub length: usize,
}

impl Auth {
    /// The shortest token [`Auth::bearer`] accepts.
    pub const MIN_TOKEN_LENGTH: usize = 16;

    /// Requests must carry `token`: the JSON API as
    /// `Authorization: Bearer <token>`, the status page as the session
    /// cookie its login form sets (or the same header). Fails when the
    /// token is shorter than [`MIN_TOKEN_LENGTH`](Self::MIN_TOKEN_LENGTH).
    pub fn bearer(token: impl AsRef<str>) -> Result<Auth, ShortToken> {
        let token = token.as_ref();
        let length = token.chars().count();
        if length < Self::MIN_TOKEN_LENGTH {
            return Err(ShortToken { length });
        }
        let session = Sha256::new()
            .chain_update(b"annals-admin-session\0")
            .chain_update(token.as_bytes())
            .finalize();
        Ok(Auth(Some(Token {
            digest: Sha256::digest(token.as_bytes()).into(),
            session: session.iter().map(|b| format!("{b:02x}")).collect(),
        })))
    }

    /// The router checks nothing: the application authenticates requests
    /// before they reach it (its own layer, a reverse proxy). The status
    /// page then shows no login form and no log-out button.
    pub fn application() -> Auth {
        Auth(None)
    }

    /// Whether the router checks a token.
    pub(super) fn checks(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `token` is the configured one (constant time).
    pub(super) fn accepts(&self, token: &str) -> bool {
        match &self.0 {
            None => true,
            Some(t) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                bool::from(digest.ct_eq(&t.digest))
            }
        }
    }

    /// Whether the request carries the token as `Authorization: Bearer`.
    pub(super) fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        if self.0.is_none() {
            return true;
        }
        headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|token| self.accepts(token.trim()))
    }

    /// Whether the request carries the bearer token or the session cookie.
    pub(super) fn page_ok(&self, headers: &HeaderMap) -> bool {
        let Some(t) = &self.0 else { return true };
        self.bearer_ok(headers)
            || cookies(headers)
                .filter(|(name, _)| *name == SESSION_COOKIE)
                .any(|(_, value)| bool::from(value.as_bytes().ct_eq(t.session.as_bytes())))
    }

    /// The session cookie's value (`None` with [`Auth::application`]).
    pub(super) fn session(&self) -> Option<&str> {
        self.0.as_ref().map(|t| t.session.as_str())
    }
}

/// The request's cookies, as (name, value) pairs.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: axum::http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("a header value"));
        h
    }

    #[test]
    fn a_bearer_token_opens_the_api_and_the_session_cookie_only_the_page() {
        let auth = Auth::bearer("0123456789abcdef-secret").expect("long enough");
        let bearer = headers(AUTHORIZATION, "Bearer 0123456789abcdef-secret");
        assert!(auth.bearer_ok(&bearer) && auth.page_ok(&bearer));
        assert!(!auth.bearer_ok(&headers(AUTHORIZATION, "Bearer 0123456789abcdef-secreT")));
        assert!(!auth.bearer_ok(&headers(AUTHORIZATION, "0123456789abcdef-secret")));
        assert!(!auth.bearer_ok(&HeaderMap::new()));
        let session = auth.session().expect("a session").to_owned();
        assert!(!session.contains("secret"));
        let cookie = headers(COOKIE, &format!("other=1; {SESSION_COOKIE}={session}"));
        assert!(auth.page_ok(&cookie));
        assert!(!auth.bearer_ok(&cookie));
        assert!(!auth.page_ok(&headers(COOKIE, &format!("{SESSION_COOKIE}=0{session}"))));
    }

    #[test]
    fn the_application_auth_checks_nothing() {
        let auth = Auth::application();
        assert!(!auth.checks());
        assert!(auth.bearer_ok(&HeaderMap::new()) && auth.page_ok(&HeaderMap::new()));
    }
}
