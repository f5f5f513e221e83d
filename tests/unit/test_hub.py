import asyncio
import time

from services.notification.hub import Hub, StreamLimitReached


async def test_a_wake_up_reaches_every_stream_of_the_user_and_no_other() -> None:
    hub = Hub()
    first, second, other_user = hub.subscribe("usr_a"), hub.subscribe("usr_a"), hub.subscribe("b")
    for subscription in (first, second, other_user):
        subscription.clear()
    hub.wake("usr_a")
    started = time.monotonic()
    await asyncio.gather(first.wait(5), second.wait(5))
    assert time.monotonic() - started < 1, "woken, not timed out"
    waited = time.monotonic()
    await other_user.wait(0.05)
    assert time.monotonic() - waited >= 0.05, "another user's news does not wake it"


async def test_a_wake_up_between_clear_and_wait_is_not_lost() -> None:
    hub = Hub()
    subscription = hub.subscribe("usr_a")
    subscription.clear()  # the stream is about to read the database
    hub.wake("usr_a")  # a row commits while it reads
    started = time.monotonic()
    await subscription.wait(5)
    assert time.monotonic() - started < 1


async def test_streams_are_counted_and_capped() -> None:
    hub = Hub(max_streams=2)
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
