//! Errors that end a channel (soft, `channel.close`) or a connection (hard, `connection.close`).
//!
//! Deep code returns these; `channel` and `connection` turn them into close frames at one place each.
//! Reply texts follow RabbitMQ's form `CODE_NAME - detail`, e.g. `NOT_FOUND - no queue 'q' in vhost '/'`,
//! because some clients match on them. Reply codes: AMQP 0-9-1 §1.9.

use amq_protocol::protocol::{AMQPHardError, AMQPSoftError};

/// A channel-level error: the server closes the channel with `code` and `text` (AMQP 0-9-1 §1.9).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelError {
    /// Reply code (311–406).
    pub code: AMQPSoftError,
    /// Reply text, `CODE_NAME - detail`.
    pub text: String,
}

/// A connection-level error: the server closes the connection with `code` and `text` (AMQP 0-9-1 §1.9).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionError {
    /// Reply code (320–541).
    pub code: AMQPHardError,
    /// Reply text, `CODE_NAME - detail`.
    pub text: String,
}

/// Either kind of AMQP error, as returned by method handlers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AmqpError {
    /// Closes the channel the method arrived on.
    #[error("channel error {}: {}", .0.code.get_id(), .0.text)]
    Channel(ChannelError),
    /// Closes the whole connection.
    #[error("connection error {}: {}", .0.code.get_id(), .0.text)]
    Connection(ConnectionError),
}

/// Result of a method handler.
pub(crate) type AmqpResult<T = ()> = Result<T, AmqpError>;

fn soft_name(code: &AMQPSoftError) -> &'static str {
    match code {
        AMQPSoftError::CONTENTTOOLARGE => "CONTENT_TOO_LARGE",
        AMQPSoftError::NOROUTE => "NO_ROUTE",
        AMQPSoftError::NOCONSUMERS => "NO_CONSUMERS",
        AMQPSoftError::ACCESSREFUSED => "ACCESS_REFUSED",
        AMQPSoftError::NOTFOUND => "NOT_FOUND",
        AMQPSoftError::RESOURCELOCKED => "RESOURCE_LOCKED",
        AMQPSoftError::PRECONDITIONFAILED => "PRECONDITION_FAILED",
    }
}

fn hard_name(code: &AMQPHardError) -> &'static str {
    match code {
        AMQPHardError::CONNECTIONFORCED => "CONNECTION_FORCED",
        AMQPHardError::INVALIDPATH => "INVALID_PATH",
        AMQPHardError::FRAMEERROR => "FRAME_ERROR",
        AMQPHardError::SYNTAXERROR => "SYNTAX_ERROR",
        AMQPHardError::COMMANDINVALID => "COMMAND_INVALID",
        AMQPHardError::CHANNELERROR => "CHANNEL_ERROR",
        AMQPHardError::UNEXPECTEDFRAME => "UNEXPECTED_FRAME",
        AMQPHardError::RESOURCEERROR => "RESOURCE_ERROR",
        AMQPHardError::NOTALLOWED => "NOT_ALLOWED",
        AMQPHardError::NOTIMPLEMENTED => "NOT_IMPLEMENTED",
        AMQPHardError::INTERNALERROR => "INTERNAL_ERROR",
    }
}

impl AmqpError {
    /// A channel error with reply text `NAME - detail`.
    pub fn channel(code: AMQPSoftError, detail: impl std::fmt::Display) -> Self {
        let text = format!("{} - {detail}", soft_name(&code));
        AmqpError::Channel(ChannelError { code, text })
    }

    /// A connection error with reply text `NAME - detail`.
    pub fn connection(code: AMQPHardError, detail: impl std::fmt::Display) -> Self {
        let text = format!("{} - {detail}", hard_name(&code));
        AmqpError::Connection(ConnectionError { code, text })
    }

    /// 404 NOT_FOUND.
    pub fn not_found(detail: impl std::fmt::Display) -> Self {
        Self::channel(AMQPSoftError::NOTFOUND, detail)
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(detail: impl std::fmt::Display) -> Self {
        Self::channel(AMQPSoftError::ACCESSREFUSED, detail)
    }

    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(detail: impl std::fmt::Display) -> Self {
        Self::channel(AMQPSoftError::RESOURCELOCKED, detail)
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(detail: impl std::fmt::Display) -> Self {
        Self::channel(AMQPSoftError::PRECONDITIONFAILED, detail)
    }

    /// 503 COMMAND_INVALID (connection).
    pub fn command_invalid(detail: impl std::fmt::Display) -> Self {
        Self::connection(AMQPHardError::COMMANDINVALID, detail)
    }

    /// 504 CHANNEL_ERROR (connection).
    pub fn channel_error(detail: impl std::fmt::Display) -> Self {
        Self::connection(AMQPHardError::CHANNELERROR, detail)
    }

    /// 505 UNEXPECTED_FRAME (connection).
    pub fn unexpected_frame(detail: impl std::fmt::Display) -> Self {
        Self::connection(AMQPHardError::UNEXPECTEDFRAME, detail)
    }

    /// 530 NOT_ALLOWED (connection).
    pub fn not_allowed(detail: impl std::fmt::Display) -> Self {
        Self::connection(AMQPHardError::NOTALLOWED, detail)
    }

    /// 540 NOT_IMPLEMENTED (connection).
    pub fn not_implemented(detail: impl std::fmt::Display) -> Self {
        Self::connection(AMQPHardError::NOTIMPLEMENTED, detail)
    }

    /// The reply code.
    pub fn reply_code(&self) -> u16 {
        match self {
            AmqpError::Channel(e) => e.code.get_id(),
            AmqpError::Connection(e) => e.code.get_id(),
        }
    }

    /// The reply text.
    pub fn reply_text(&self) -> &str {
        match self {
            AmqpError::Channel(e) => &e.text,
            AmqpError::Connection(e) => &e.text,
        }
    }

    /// The reply text's detail, without the `CODE_NAME - ` prefix (RabbitMQ's HTTP API reason).
    pub fn detail(&self) -> &str {
        let text = self.reply_text();
        text.split_once(" - ").map_or(text, |(_, detail)| detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_follow_rabbitmq_form() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'");
        assert_eq!(e.reply_code(), 404);
        assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
        let e = AmqpError::command_invalid("unknown exchange type 'foo'");
        assert_eq!(e.reply_code(), 503);
        assert_eq!(
            e.reply_text(),
            "COMMAND_INVALID - unknown exchange type 'foo'"
        );
    }
}
