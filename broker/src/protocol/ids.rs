//! Class and method ids and reply codes of AMQP 0-9-1 that the broker writes or checks by number
//! (the hand-written encoders, close frames that name the failing method). Values from the spec's
//! XML (amqp0-9-1.xml, the `class` and `method` `index` attributes; §1.1 constants for reply codes).

/// connection class (§1.4).
pub const CONNECTION_CLASS: u16 = 10;
/// channel class (§1.5).
pub const CHANNEL_CLASS: u16 = 20;
/// exchange class (§1.6).
pub const EXCHANGE_CLASS: u16 = 40;
/// queue class (§1.7).
pub const QUEUE_CLASS: u16 = 50;
/// basic class (§1.8); also the class id of every content header the broker accepts.
pub const BASIC_CLASS: u16 = 60;
/// confirm class (RabbitMQ extension).
pub const CONFIRM_CLASS: u16 = 85;
/// tx class (§1.9).
pub const TX_CLASS: u16 = 90;

/// basic.publish.
pub const BASIC_PUBLISH: u16 = 40;
/// basic.return.
pub const BASIC_RETURN: u16 = 50;
/// basic.deliver.
pub const BASIC_DELIVER: u16 = 60;
/// basic.get-ok.
pub const BASIC_GET_OK: u16 = 71;
/// basic.ack.
pub const BASIC_ACK: u16 = 80;
/// basic.nack (RabbitMQ extension).
pub const BASIC_NACK: u16 = 120;
/// tx.commit.
pub const TX_COMMIT: u16 = 20;

/// 312 NO_ROUTE: basic.return of an unroutable mandatory message (RabbitMQ docs/publishers.md).
pub const NO_ROUTE: u16 = 312;
