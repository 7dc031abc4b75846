//! Responses: JSON bodies and the contract's error shapes.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::store::StoreError;

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    json_bytes(status, render(body))
}

/// A body rendered as JSON.
pub fn render(body: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A response with an already rendered JSON body.
pub fn json_bytes(status: StatusCode, bytes: Bytes) -> Reply {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One entry of a 422 `detail` list, shaped like the old backend's (pydantic) errors.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl FieldError {
    pub fn body(field: &str, kind: &'static str, msg: impl Into<String>) -> Self {
        FieldError {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind,
        }
    }
}

/// Everything a handler can refuse with.
#[derive(Debug)]
pub enum ApiError {
    NotFound(String),
    Forbidden(String),
    Conflict(String),
    Invalid(Vec<FieldError>),
    TooLarge(usize),
    MethodNotAllowed(&'static str),
    Unavailable(String),
    Timeout(std::time::Duration),
    /// A body of this type (not JSON).
    UnsupportedMediaType(String),
}

/// The store's failures reach clients as 503 with the reason; they are reported (once per
/// cause) by health, where the failing write is noted, not here per request.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

#[derive(Serialize)]
struct Detail<'a, T: Serialize> {
    detail: &'a T,
}

impl ApiError {
    pub fn reply(&self) -> Reply {
        let text = |status, msg: &str| json(status, &Detail { detail: &msg });
        match self {
            ApiError::NotFound(m) => text(StatusCode::NOT_FOUND, m),
            ApiError::Forbidden(m) => text(StatusCode::FORBIDDEN, m),
            ApiError::Conflict(m) => text(StatusCode::CONFLICT, m),
            ApiError::Invalid(errors) => {
                json(StatusCode::UNPROCESSABLE_ENTITY, &Detail { detail: errors })
            }
            ApiError::TooLarge(limit) => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {limit} bytes"),
            ),
            ApiError::MethodNotAllowed(allow) => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                r
            }
            ApiError::Unavailable(m) => text(StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::UnsupportedMediaType(t) => text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("request bodies must be application/json, not {t}"),
            ),
            ApiError::Timeout(limit) => text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(*limit)
                ),
            ),
        }
    }
}
