import asyncio

import pytest

from services.common import clients, deadline


def test_replica_lists_become_a_balanced_target() -> None:
    assert clients.target("127.0.0.1:50052") == "127.0.0.1:50052"
    assert clients.target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="no address"):
        clients.target(" , ")


async def test_outgoing_timeout_is_what_remains_capped_by_the_default() -> None:
    assert deadline.outgoing_timeout(5.0) == 5.0
    token = deadline.set_deadline(1.0)
    try:
        left = deadline.outgoing_timeout(5.0)
        assert left is not None and 0.9 < left <= 1.0
        await asyncio.sleep(0.05)
        later = deadline.outgoing_timeout(None)
        assert later is not None and later < left
    finally:
        deadline.reset_deadline(token)
    assert deadline.remaining() is None
