//! Stable error codes, shared by the client protocol (`error` frames) and the
//! HTTP API (`{"error":{"code":..}}`). Clients branch on these; never rename one.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Malformed JSON, unknown frame type, missing or invalid field, binary frame.
    ValidationError,
    /// Missing, malformed, expired or wrongly signed credentials.
    Unauthorized,
    /// Authenticated, but the grants do not cover this channel or action.
    Forbidden,
    /// No such org, channel subscription, role or session.
    NotFound,
    /// The resource exists or is owned by someone else (e.g. a claimed role).
    Conflict,
    /// Already subscribed to this channel on this connection.
    AlreadySubscribed,
    /// Over the connection's publish rate.
    RateLimited,
    /// A per-connection or per-server limit (subscriptions, connections) is reached.
    LimitExceeded,
    /// A frame or body is larger than the configured maximum.
    FrameTooLarge,
    /// The connection fell too far behind and was cut off.
    SlowConsumer,
    /// The server is draining or a dependency is down; try again (elsewhere).
    Unavailable,
    /// A bug on our side; the details are in the server log, not here.
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::AlreadySubscribed => "ALREADY_SUBSCRIBED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status that carries this code on the HTTP API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationError => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::AlreadySubscribed => 409,
            ErrorCode::FrameTooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded | ErrorCode::SlowConsumer => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::InternalError => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_is_as_str() {
        for code in [
            ErrorCode::ValidationError,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::AlreadySubscribed,
            ErrorCode::RateLimited,
            ErrorCode::LimitExceeded,
            ErrorCode::FrameTooLarge,
            ErrorCode::SlowConsumer,
            ErrorCode::Unavailable,
            ErrorCode::InternalError,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }
}
