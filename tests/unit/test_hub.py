from datetime import UTC, datetime

from services.notification.hub import Hub, StreamLimitReached
from services.notification.models import NotificationRow


def note(seq: int, user_id: str = "usr_a") -> NotificationRow:
    return NotificationRow(
        seq=seq,
        id=f"ntf_{seq}",
        user_id=user_id,
        kind="ORDER_PLACED",
        title="t",
        body="b",
        order_id="ord",
        event_id=f"evt_{seq}",
        read=False,
        create_time=datetime.now(UTC),
    )


async def test_a_stuck_subscriber_overflows_without_blocking_the_others() -> None:
    hub = Hub(queue_size=3)
    stuck, reader, other_user = (
        hub.subscribe("usr_a"),
        hub.subscribe("usr_a"),
        hub.subscribe("usr_b"),
    )
    received = []
    for seq in range(1, 11):
        hub.publish([note(seq)])  # never blocks, whoever is slow
        pushed = await reader.next(0.1)
        assert pushed is not None
        received.append(pushed.seq)
    assert received == list(range(1, 11))
    assert stuck.overflowed and stuck.queue.qsize() == 3, "bounded: it holds 3, then gives up"
    assert not reader.overflowed
    assert other_user.queue.empty() and not other_user.overflowed


async def test_streams_are_counted_and_capped() -> None:
    hub = Hub(queue_size=1, max_streams=2)
    first, second = hub.subscribe("u"), hub.subscribe("v")
    assert hub.open_streams == 2
    try:
        hub.subscribe("w")
        raise AssertionError("a third stream must be refused")
    except StreamLimitReached:
        pass
    hub.unsubscribe(first)
    hub.unsubscribe(first)  # twice is harmless
    assert hub.open_streams == 1
    hub.unsubscribe(second)
    assert hub.open_streams == 0
