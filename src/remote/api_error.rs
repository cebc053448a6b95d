//! The backbone server's HTTP errors: a status and a message, answered as JSON
//! `{"error": ...}`. A 429 (no room: sessions or KV blocks) tells the client when to retry.

use axum::http::{header, StatusCode};
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
