"""`x-py-direct`: a direct exchange as a Python plugin (componentize-py against `wit/`).

Routes a message to the bindings whose key equals its routing key, like the native `direct` type.
Built by `plugins/python/build.sh`; the tests use it as the large-plugin fixture (a componentize-py
component is ~18 MB and takes seconds to compile, which is what fast start and the compile cache are
measured with).
"""

from __future__ import annotations

from typing import Dict, List

from wit_world import exports
from wit_world.exports import exchange
from wit_world.imports import types

# binding id -> binding key, as the host pushed them
_bindings: Dict[int, str] = {}


def _route(key: str) -> List[int]:
    return [i for i, k in _bindings.items() if k == key]


class Exchange(exports.Exchange):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="x-py-direct",
            version="1.0.0",
            description="direct routing, written in Python",
        )

    def init(self, arguments: bytes) -> exchange.ExchangeOptions:
        # warren:plugin@0.4.0: what routing depends on, and whether `schedule` is asked per message.
        return exchange.ExchangeOptions(routes_on=exchange.RoutesOn.ROUTING_KEY, schedules=False)

    def schedule(self, message: types.Message) -> exchange.Due:
        return exchange.Due_Now()

    def validate_binding(self, binding: exchange.Binding) -> None:
        return None

    def add_binding(self, binding: exchange.Binding) -> None:
        _bindings[binding.id] = binding.key

    def remove_binding(self, id: int) -> None:
        _bindings.pop(id, None)

    def route(self, message: types.Message, routing_key: str) -> List[int]:
        return _route(routing_key)

    def route_messages(
        self, messages: types.MessageRun, keys: bytes, key_ends: List[int]
    ) -> exchange.RoutedKeys:
        # Asked only of exchanges that route on the message (warren:plugin@0.3.0); this one routes on
        # the key, so the broker batches with route_keys instead. Answered all the same.
        return self.route_keys(keys, key_ends)

    def route_keys(self, keys: bytes, key_ends: List[int]) -> exchange.RoutedKeys:
        ids: List[int] = []
        ends: List[int] = []
        start = 0
        for end in key_ends:
            ids.extend(_route(keys[start:end].decode("utf-8", "replace")))
            ends.append(len(ids))
            start = end
        return exchange.RoutedKeys(ids=ids, id_ends=ends)
