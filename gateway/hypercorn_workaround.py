"""A workaround for a Hypercorn 0.18 HTTP/2 bug (pgjones/hypercorn#329).

When the gateway answers a request before reading its body (a refused token, a rate
limit, an unknown path), Hypercorn forgets the stream; DATA frames the client sends
afterwards then raise `KeyError` in its event loop for the connection, which logs a
traceback and drops every other stream of that connection. The fix upstream (guarding
the DATA branch as the end-of-stream branch already is) has not been released, so
here such frames are acknowledged (their bytes count against flow control) and
dropped before Hypercorn sees them. Remove when a Hypercorn release carries the fix.
"""

from __future__ import annotations

from typing import Any

import h2.events
from hypercorn.protocol.h2 import H2Protocol

_original = H2Protocol._handle_events


async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
    # One event at a time: a stream is known only once its own headers were handled,
    # which may be earlier in the same batch.
    for event in events:
        if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
            self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            continue
        await _original(self, [event])


def apply() -> None:
    """Installs the workaround (idempotent)."""
    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
