//! DynamoDB's error shapes: HTTP 400 (500 for our own failures) with
//! `{"__type": "<namespace>#<Code>", "message": "…"}`. The SDKs raise the exception
//! named after the `#` (boto3: `ClientError` with `Error.Code`, and
//! `client.exceptions.ConditionalCheckFailedException`, …).

use crate::value::{Item, ValueError, item_to_json};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

const DYNAMODB: &str = "com.amazonaws.dynamodb.v20120810";
const CORAL_VALIDATE: &str = "com.amazon.coral.validate";
const CORAL_SERVICE: &str = "com.amazon.coral.service";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub namespace: &'static str,
    pub code: &'static str,
    pub message: String,
    /// ConditionalCheckFailedException with ReturnValuesOnConditionCheckFailure = ALL_OLD.
    pub item: Option<Item>,
}

impl ApiError {
    fn new(namespace: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            namespace,
            code,
            message: message.into(),
            item: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(CORAL_VALIDATE, "ValidationException", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(DYNAMODB, "ResourceNotFoundException", message)
    }

    /// The table of a request does not exist (DynamoDB's text).
    pub fn no_table(name: &str) -> ApiError {
        ApiError::not_found(format!(
            "Requested resource not found: Table: {name} not found"
        ))
    }

    pub fn in_use(message: impl Into<String>) -> ApiError {
        ApiError::new(DYNAMODB, "ResourceInUseException", message)
    }

    pub fn conditional_check_failed(item: Option<Item>) -> ApiError {
        let mut e = ApiError::new(
            DYNAMODB,
            "ConditionalCheckFailedException",
            "The conditional request failed",
        );
        e.item = item;
        e
    }

    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new(CORAL_SERVICE, "SerializationException", message)
    }

    pub fn unknown_operation(message: impl Into<String>) -> ApiError {
        ApiError::new(CORAL_SERVICE, "UnknownOperationException", message)
    }

    /// A signature or credential refused (`code` from [`crate::sigv4::SigError::code`]).
    pub fn auth(code: &'static str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(CORAL_SERVICE, code, message);
        if code == "AccessDeniedException" {
            e.namespace = DYNAMODB;
        }
        e
    }

    pub fn item_too_large() -> ApiError {
        ApiError::validation("Item size has exceeded the maximum allowed size")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(DYNAMODB, "InternalServerError", message);
        e.status = StatusCode::INTERNAL_SERVER_ERROR;
        e
    }

    pub fn body(&self) -> serde_json::Value {
        let mut b = serde_json::json!({
            "__type": format!("{}#{}", self.namespace, self.code),
            "message": self.message,
        });
        if let Some(item) = &self.item {
            b["Item"] = item_to_json(item);
        }
        b
    }
}

impl From<ValueError> for ApiError {
    fn from(e: ValueError) -> ApiError {
        ApiError::validation(e.0)
    }
}

impl From<crate::expr::ExprError> for ApiError {
    fn from(e: crate::expr::ExprError) -> ApiError {
        ApiError::validation(e.message)
    }
}

/// The content type of every DynamoDB answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("table server: {}: {}", self.code, self.message);
        }
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
            self.body().to_string(),
        )
            .into_response()
    }
}
