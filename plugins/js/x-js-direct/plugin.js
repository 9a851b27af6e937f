// x-js-direct: routes to the bindings whose key equals the routing key.
const bindings = new Map(); // id -> key

function routeKey(key) {
  const ids = [];
  for (const [id, k] of bindings) if (k === key) ids.push(id);
  return ids;
}

export const exchange = {
  describe() {
    return { name: "x-js-direct", version: "1.0.0", description: "direct routing, written in JavaScript" };
  },
  init(_arguments) {
    // warren:plugin@0.4.0: what routing depends on, and whether `schedule` is asked per message.
    return { routesOn: "routing-key", schedules: false };
  },
  schedule(_message) {
    return { tag: "now" };
  },
  validateBinding(binding) {
    if (binding.key.length === 0) throw "x-js-direct: empty binding key";
  },
  addBinding(binding) {
    bindings.set(binding.id, binding.key);
  },
  removeBinding(id) {
    bindings.delete(id);
  },
  route(_message, routingKey) {
    return routeKey(routingKey);
  },
  routeKeys(keys, keyEnds) {
    const decoder = new TextDecoder();
    const ids = [];
    const idEnds = [];
    let start = 0;
    for (const end of keyEnds) {
      ids.push(...routeKey(decoder.decode(keys.subarray(start, end))));
      idEnds.push(ids.length);
      start = end;
    }
    return { ids, idEnds };
  },
  routeMessages(messages, keys, keyEnds) {
    return exchange.routeKeys(keys, keyEnds);
  },
};
