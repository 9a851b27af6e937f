//! `x-random`: routes each message to one binding chosen at random, ignoring the routing key
//! (RabbitMQ's rabbitmq_random_exchange).

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

use warren_plugin_sdk::exchange::Exchange;
use warren_plugin_sdk::Message;

thread_local! {
    /// xorshift64* state; one instance routes for one exchange, so each exchange has its own stream.
    /// 0 until the first message, then seeded from the host's randomness.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// A seed from WASI randomness (`wasi:random`, which std's `RandomState` keys come from), never 0
/// (xorshift's fixed point): each exchange, and each restart, draws a different sequence.
fn seed() -> u64 {
    RandomState::new().hash_one(0x9E37_79B9_7F4A_7C15_u64) | 1
}

fn next_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// One binding, uniformly at random; nowhere when there are none.
#[warren_plugin_sdk::exchange(
    name = "x-random",
    description = "Routes each message to one bound destination picked at random"
)]
fn route(exchange: &Exchange, _message: &Message) -> Option<u32> {
    let bindings = exchange.bindings();
    if bindings.is_empty() {
        return None;
    }
    let i = (next_random() % bindings.len() as u64) as usize;
    Some(bindings[i].id)
}
