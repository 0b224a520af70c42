//! The operator's bearer token: what guards the routes that change operator state or read
//! every customer's data. One token per deployment, compared in constant time.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::ApiError;

/// The shortest token accepted from configuration: a guessable token is no token.
pub const MIN_TOKEN_LEN: usize = 16;

/// The operator's token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the admin token must be at least {MIN_TOKEN_LEN} characters of visible ASCII")]
    Weak,
    #[error("admin token file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for a new admin token: {0}")]
    Random(String),
}

impl AdminToken {
    /// A token from configuration: at least [`MIN_TOKEN_LEN`] characters of visible ASCII (it
    /// travels in a header).
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let t = token.trim();
        if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Weak);
        }
        Ok(Self(t.into()))
    }

    /// A new random token: 32 bytes from the operating system, hex (`sfa_` + 64 digits).
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(format!("sfa_{hex}").into()))
    }

    /// The token kept in `path`, or a new one written there (mode 0600, never overwritten);
    /// `true` when it was created now.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), TokenError> {
        let file_err = |source| TokenError::File {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok((Self::new(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_err(e)),
        }
        let token = Self::generate()?;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        match o.open(path) {
            Ok(mut f) => {
                f.write_all(format!("{}\n", token.0).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(file_err)?;
                Ok((token, true))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(file_err)?;
                Ok((Self::new(&text)?, false))
            }
            Err(e) => Err(file_err(e)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // `ct_eq` on slices of different lengths is false without looking at the bytes; the
        // length of the token is not the secret.
        bool::from(self.0.as_bytes().ct_eq(presented))
    }

    /// Whether the request's `Authorization: Bearer …` carries the token.
    pub fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| self.matches(t))
    }
}

/// Which requests need the token: given the method and the path.
pub type Policy = fn(&axum::http::Method, &str) -> bool;

/// Middleware: a request the policy guards goes through only with the token; else 401 with the
/// JSON error shape and `WWW-Authenticate: Bearer`.
pub async fn require_admin(
    State((token, policy)): State<(AdminToken, Policy)>,
    req: Request,
    next: Next,
) -> Response {
    if !policy(req.method(), req.uri().path()) || token.admits(req.headers()) {
        return next.run(req).await;
    }
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if presented {
            "the admin token is not right"
        } else {
            "this needs the admin token: Authorization: Bearer <token> (see docs/SECURITY.md)"
        },
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"shopflow-admin\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_whole() {
        let t = AdminToken::new("correct-horse-battery").unwrap();
        assert!(t.matches(b"correct-horse-battery"));
        assert!(!t.matches(b"correct-horse-batterx"));
        assert!(!t.matches(b"correct-horse-batter"));
        assert!(!t.matches(b"correct-horse-battery!"));
        assert!(!t.matches(b""));
        let mut h = axum::http::HeaderMap::new();
        assert!(!t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer correct-horse-battery"),
        );
        assert!(t.admits(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer correct-horse-battery"),
        );
        assert!(!t.admits(&h), "the scheme is case-sensitive here: Bearer");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic correct-horse-battery"),
        );
        assert!(!t.admits(&h));
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert!(AdminToken::new("short").is_err());
        assert!(
            AdminToken::new("sixteen chars ok").is_err(),
            "no spaces inside"
        );
        assert!(AdminToken::new("  sixteen-chars-ok\n").is_ok(), "trimmed");
        let g = AdminToken::generate().unwrap();
        assert_eq!(g.as_str().len(), 4 + 64);
        assert_ne!(g.as_str(), AdminToken::generate().unwrap().as_str());
        assert_eq!(format!("{g:?}"), "AdminToken(…)");
    }

    #[test]
    fn the_token_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let (a, created) = AdminToken::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = AdminToken::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.as_str(), b.as_str());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "weak\n").unwrap();
        assert!(matches!(
            AdminToken::load_or_create(&path),
            Err(TokenError::Weak)
        ));
    }
}
