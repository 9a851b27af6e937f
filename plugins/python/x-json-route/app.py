"""`x-json-route`: an exchange type that routes on a field of a JSON body (a Warren plugin in Python,
built with componentize-py against `wit/`).

A binding names a path into the body and, optionally, the value it must have:

- binding key `order.region=eu`: messages whose body has `{"order": {"region": "eu"}}`;
- binding key `order.express`: messages whose body has the path at all (any value);
- path segments are object keys, or array indices (`items.0.sku`);
- a value compares with a JSON string as text, with numbers, booleans and null as their JSON text
  (`total=12`, `paid=true`, `coupon=null`);
- the binding arguments `x-json-path` and `x-json-value` (strings) override the key, for paths or
  values that contain `=`.

A body that is not JSON routes nowhere (the exchange's alternate exchange, `mandatory` returns and
publisher confirms apply as for any unroutable message). Decisions depend on the body, so the
exchange says `routes-on = message`; the broker then hands it runs of messages in one
`route-messages` call, and each body is parsed once for all bindings.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import exchange
from wit_world.imports import types

_MISSING = object()

# binding id -> (path, expected value as text, or None for "the path exists"); a path is a tuple of
# (object key, array index or None) per segment
_bindings: Dict[int, Tuple[Tuple[Tuple[str, Optional[int]], ...], Optional[str]]] = {}
# the same as a list of (id, path, expected), in binding order, for the routing loop
_routes: List[Tuple[int, Tuple[Tuple[str, Optional[int]], ...], Optional[str]]] = []


def _table(data: bytes) -> Dict[str, Any]:
    """Decodes an AMQP field table (AMQP 0-9-1 §4.2.5.5, RabbitMQ's type tags) after its length."""
    out: Dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n].decode("utf-8", "replace")
        pos += 1 + n
        value, pos = _value(data, pos)
        out[name] = value
    return out


def _value(data: bytes, pos: int) -> Tuple[Any, int]:
    tag = chr(data[pos])
    pos += 1
    fixed = {"t": ("?", 1), "b": ("b", 1), "B": ("B", 1), "s": (">h", 2), "u": (">H", 2),
             "I": (">i", 4), "i": (">I", 4), "l": (">q", 8), "f": (">f", 4), "d": (">d", 8),
             "T": (">Q", 8)}
    if tag in fixed:
        fmt, size = fixed[tag]
        return struct.unpack(fmt, data[pos : pos + size])[0], pos + size
    if tag in ("S", "x"):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        raw = data[pos + 4 : pos + 4 + size]
        return (raw.decode("utf-8", "replace") if tag == "S" else raw), pos + 4 + size
    if tag in ("F", "A"):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        return None, pos + 4 + size  # nested tables and arrays are not used here
    if tag == "D":
        return None, pos + 5
    if tag == "V":
        return None, pos
    raise ValueError(f"unknown field type {tag!r}")


def _parse(binding: exchange.Binding) -> Tuple[Tuple[Tuple[str, Optional[int]], ...], Optional[str]]:
    """The binding's path and expected value; raises ValueError with the reason it is refused."""
    arguments = _table(bytes(binding.arguments)) if binding.arguments else {}
    if "x-json-path" in arguments:
        path = arguments["x-json-path"]
        expected = arguments.get("x-json-value")
        if not isinstance(path, str) or (expected is not None and not isinstance(expected, str)):
            raise ValueError("x-json-route: x-json-path and x-json-value must be strings")
    else:
        path, sep, value = binding.key.partition("=")
        expected = value if sep else None
    segments = path.split(".") if path else []
    if not segments or any(s == "" for s in segments):
        raise ValueError(
            "x-json-route: the binding key must be 'path=value' or 'path' "
            f"(e.g. 'order.region=eu'), not {binding.key!r}"
        )
    return tuple((s, int(s) if s.isdigit() else None) for s in segments), expected


# The C scanner behind json.loads, called directly: json.loads(bytes) spends most of its time
# detecting the encoding and matching whitespace around the document in Python code (~3.7x slower
# for a small body, measured natively).
_scan = json.JSONDecoder().scan_once


def _document(body: bytes) -> Any:
    """The body's JSON value, or _MISSING when the body is not JSON (UTF-8, as RFC 8259 requires)."""
    try:
        text = body.decode("utf-8")
        document, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError):
        # Not JSON, or JSON after leading whitespace: the strict parser decides.
        try:
            return json.loads(body)
        except ValueError:
            return _MISSING
    if end != len(text) and text[end:].strip():
        return _MISSING  # trailing garbage: not a JSON document
    return document


def _route_bodies(octets: bytes, body_ends: List[int]) -> exchange.RoutedKeys:
    """The ids of the bindings each body matches, in binding order, in `route-keys`'s flat form: body i
    is `octets[body_ends[i-1]:body_ends[i]]`. The one routing loop, for `route` (one body) and
    `route-messages` (a run); written without function calls, which cost more in Python than the
    rest of the work here."""
    routes = _routes
    scan = _scan
    missing = _MISSING
    ids: List[int] = []
    ends: List[int] = []
    start = 0
    for end in body_ends:
        body = octets[start:end]
        start = end
        try:
            text = body.decode("utf-8")
            document, stop = scan(text, 0)
            if stop != len(text) and text[stop:].strip():
                document = missing
        except (UnicodeDecodeError, StopIteration, ValueError):
            document = _document(body)
        if document is not missing:
            for binding_id, path, expected in routes:
                node = document
                for key, index in path:
                    kind = type(node)
                    if kind is dict:
                        node = node.get(key, missing)
                        if node is missing:
                            break
                    elif kind is list and index is not None and index < len(node):
                        node = node[index]
                    else:
                        node = missing
                        break
                if node is missing:
                    continue
                if expected is None or (node if type(node) is str else json.dumps(node)) == expected:
                    ids.append(binding_id)
        ends.append(len(ids))
    return exchange.RoutedKeys(ids=ids, id_ends=ends)


def _rebuild() -> None:
    _routes[:] = [(i, path, expected) for i, (path, expected) in _bindings.items()]


class Exchange(exports.Exchange):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="x-json-route",
            version="1.0.0",
            description="Routes on a field of a JSON body (binding key path=value)",
        )

    def init(self, arguments: bytes):
        # warren:plugin@0.4.0 answers what routing depends on and whether `schedule` is asked per
        # message; built against a released package (scripts/bench_plugin_batch.py builds this file
        # against 0.2.0 too), the routing dependency alone.
        if hasattr(exchange, "ExchangeOptions"):
            return exchange.ExchangeOptions(routes_on=exchange.RoutesOn.MESSAGE, schedules=False)
        return exchange.RoutesOn.MESSAGE

    def schedule(self, message: types.Message) -> exchange.Due:
        return exchange.Due_Now()

    def validate_binding(self, binding: exchange.Binding) -> None:
        try:
            _parse(binding)
        except ValueError as e:
            raise Err(str(e))

    def add_binding(self, binding: exchange.Binding) -> None:
        try:
            _bindings[binding.id] = _parse(binding)
        except ValueError:
            pass  # refused by validate_binding first; the broker adds only validated bindings
        _rebuild()

    def remove_binding(self, id: int) -> None:
        _bindings.pop(id, None)
        _rebuild()

    def route(self, message: types.Message, routing_key: str) -> List[int]:
        body = message.body()
        return _route_bodies(body, [len(body)]).ids

    def route_keys(self, keys: bytes, key_ends: List[int]) -> exchange.RoutedKeys:
        # Only asked of exchanges that route on the routing key: never here.
        return exchange.RoutedKeys(ids=[], id_ends=[0] * len(key_ends))

    def route_messages(
        self, messages: types.MessageRun, keys: bytes, key_ends: List[int]
    ) -> exchange.RoutedKeys:
        # Every body in one host call (one boundary crossing for the run).
        bodies = messages.bodies()
        return _route_bodies(bodies.octets, bodies.ends)
