//! Class and method ids and reply codes of AMQP 0-9-1 that the broker writes or checks by number
//! (the hand-written encoders, close frames that name the failing method). Values from the spec's
//! XML (amqp0-9-1.xml, the `class` and `method` `index` attributes; §1.1 constants for reply codes).

/// basic class (§1.8); also the class id of every content header the broker accepts.
pub(crate) const BASIC_CLASS: u16 = 60;
/// tx class (§1.9).
pub(crate) const TX_CLASS: u16 = 90;

/// basic.publish.
pub(crate) const BASIC_PUBLISH: u16 = 40;
/// basic.return.
pub(crate) const BASIC_RETURN: u16 = 50;
/// basic.deliver.
pub(crate) const BASIC_DELIVER: u16 = 60;
/// basic.get-ok.
pub(crate) const BASIC_GET_OK: u16 = 71;
/// basic.ack.
pub(crate) const BASIC_ACK: u16 = 80;
/// basic.nack (RabbitMQ extension).
pub(crate) const BASIC_NACK: u16 = 120;
/// tx.commit.
pub(crate) const TX_COMMIT: u16 = 20;

/// 312 NO_ROUTE: basic.return of an unroutable mandatory message (RabbitMQ docs/publishers.md).
pub(crate) const NO_ROUTE: u16 = 312;
