//! The binary's companion commands (`warren hash-password`, `warren ping`), for operators and
//! container health checks.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long `ping` waits to connect and for the answer.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// `password` hashed in RabbitMQ's `rabbit_password_hashing_sha256` format (base64 of a random
/// 4-octet salt ‖ SHA-256(salt ‖ password)), as `rabbitmqctl hash_password` prints it.
pub fn hash_password(password: &str) -> String {
    crate::auth::hash_password(password)
}

/// Sends the AMQP 0-9-1 protocol header to `address` and checks the answer is a connection.start
/// method frame (AMQP 0-9-1 §4.2.3: frame type 1, channel 0, class 10, method 10).
///
/// # Errors
/// The address does not resolve, the connection fails or times out, or the answer is not
/// connection.start; the message says which.
pub fn ping(address: &str) -> Result<(), String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, PING_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PING_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| format!("cannot send the protocol header to {addr}: {e}"))?;
    let mut head = [0u8; 11];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    // type, channel (2), size (4), class (2), method (2)
    if head[0] == 1 && head[1..3] == [0, 0] && head[7..11] == [0, 10, 0, 10] {
        Ok(())
    } else {
        Err(format!(
            "{addr} answered something other than AMQP 0-9-1 connection.start"
        ))
    }
}
