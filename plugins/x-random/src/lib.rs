//! `x-random`: routes each message to one binding chosen at random, ignoring the routing key
//! (RabbitMQ's rabbitmq_random_exchange).

use std::cell::Cell;

use warren_plugin_sdk::exchange::Exchange;
use warren_plugin_sdk::Message;

thread_local! {
    /// xorshift64* state; one instance routes for one exchange, so each exchange has its own stream.
    static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

fn next_random() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
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
