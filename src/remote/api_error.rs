//! The backbone server's HTTP errors: a status and a message, answered as JSON
//! `{"error": ...}`. A 429 (no room: sessions or KV blocks) tells the client when to retry.
//! Refusals made before a handler runs (an unknown path or method, a body over the limit, a
//! body that is not the JSON expected) get the same form from [`json_errors`].

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::Error;

/// Seconds a refused client waits before retrying (`Retry-After` of a 429).
pub const RETRY_AFTER_S: u64 = 1;

/// An HTTP error with a JSON body.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.1 }));
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            let retry = [(header::RETRY_AFTER, RETRY_AFTER_S.to_string())];
            return (self.0, retry, body).into_response();
        }
        (self.0, body).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidRequest(_)
            | Error::TokenOutOfRange { .. }
            | Error::Safetensors { .. }
            | Error::Shape { .. }
            | Error::MissingTensor { .. }
            | Error::Dtype { .. }
            | Error::Config { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// A handler's result.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// A 400 with `msg`.
pub fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Longest plain-text refusal body [`json_errors`] reads to quote it.
const QUOTED_BODY: usize = 4096;

/// Middleware: an error answered without a JSON body (axum's own refusals: 404 for an unknown
/// path, 405, 413, the JSON extractor's 400/415/422) gets one, `{"error": ...}`, quoting the
/// plain-text reason or naming the method and path. HEAD answers keep their empty body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json || method == Method::HEAD
    {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, QUOTED_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let path: String = path.chars().take(200).collect();
    let msg = match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => format!("no endpoint {path} (see docs/protocol.md)"),
        (StatusCode::METHOD_NOT_ALLOWED, true) => format!("{method} is not allowed on {path}"),
        (_, true) => format!("{status} on {method} {path}"),
        (_, false) => text,
    };
    let mut out = ApiError(status, msg).into_response();
    // Keep what the refusal said besides its body (Allow, Retry-After).
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
