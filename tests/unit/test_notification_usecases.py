"""The notification use cases against in-memory fakes: events become notifications once,
numbered per user without gaps; reading, marking read and streaming, without a database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.events.envelope import Event
from services.common.events.feed import event_of
from services.common.pagination import PageTokens
from services.notification import models, order_events
from services.notification.hub import Hub
from services.notification.models import NotificationRow, TooManyStreams
from services.notification.usecases import Notifications, format_money
from shop.common.v1 import money_pb2
from shop.order.v1 import events_pb2, order_internal_pb2, order_pb2
from tests.fakes.notification import InMemoryConsumer, InMemoryNotifications

TOKENS = PageTokens("unit-test-secret")


class SpyHub(Hub):
    """A hub that notes each wake-up, and how many notifications were committed then."""

    def __init__(self, max_streams: int, repository: InMemoryNotifications) -> None:
        super().__init__(max_streams)
        self._repository = repository
        self.woken: list[tuple[str, int]] = []

    def wake(self, user_id: str) -> None:
        self.woken.append((user_id, len(self._repository.rows)))
        super().wake(user_id)


class Service:
    def __init__(self, max_streams: int = 100) -> None:
        self.repository = InMemoryNotifications()
        self.hub = SpyHub(max_streams, self.repository)
        # A long catch-up: a stream here moves on a wake-up, never on the periodic look.
        self.notifications = Notifications(self.repository, TOKENS, self.hub, catch_up_interval=60)
        self.consumer = InMemoryConsumer(self.notifications, self.repository)
        self._events = 0

    async def order_event(
        self,
        user_id: str,
        order_id: str = "ord_1",
        *,
        cancelled: bool = False,
        quantities: tuple[int, ...] = (1,),
        total: tuple[int, str] = (1999, "EUR"),
        reason: str = "",
        event_id: str = "",
    ) -> Event:
        """Delivers the event to the consumer; returns it (to deliver it again)."""
        self._events += 1
        order = order_pb2.Order(
            id=order_id,
            user_id=user_id,
            items=[order_pb2.OrderItem(quantity=q) for q in quantities],
            total=money_pb2.Money(amount_minor=total[0], currency_code=total[1]),
            cancel_reason=reason,
        )
        event_id = event_id or f"evt_{self._events}"
        payload: events_pb2.OrderCreated | events_pb2.OrderCancelled
        if cancelled:
            payload = events_pb2.OrderCancelled(event_id=event_id, order=order)
            subject = order_events.ORDER_CANCELLED
        else:
            payload = events_pb2.OrderCreated(event_id=event_id, order=order)
            subject = order_events.ORDER_CREATED
        event = Event(event_id=event_id, subject=subject, payload=payload.SerializeToString())
        await self.consumer.apply(event)
        return event

    def of(self, user_id: str) -> list[NotificationRow]:
        return sorted(
            (row for row in self.repository.rows if row.user_id == user_id),
            key=lambda row: row.user_seq,
        )


@pytest.fixture
def service() -> Service:
    return Service()


# -- from events ---------------------------------------------------------------


def test_subjects_are_the_contract_field_names_with_dots() -> None:
    assert (order_events.ORDER_CREATED, order_events.ORDER_CANCELLED) == (
        "order.created",
        "order.cancelled",
    )


def test_a_feed_message_becomes_the_event_it_carries() -> None:
    created = events_pb2.OrderCreated(event_id="evt_9", order=order_pb2.Order(id="ord_9"))
    message = order_internal_pb2.StreamOrderEventsResponse(
        sequence=42, headers={"traceparent": "00-x"}, order_created=created
    )
    event = event_of(message)
    assert (event.event_id, event.subject, event.sequence) == ("evt_9", "order.created", 42)
    assert dict(event.headers) == {"traceparent": "00-x"}
    assert events_pb2.OrderCreated.FromString(event.payload) == created


async def test_an_order_placed_makes_one_unread_notification(service: Service) -> None:
    await service.order_event("usr_a", "ord_1", quantities=(2, 1), total=(2550, "EUR"))
    (row,) = service.of("usr_a")
    assert (row.kind, row.title, row.order_id, row.event_id) == (
        models.ORDER_PLACED,
        "Order placed",
        "ord_1",
        "evt_1",
    )
    assert row.body == "Your order ord_1 of 3 items totalling 25.50 EUR has been placed."
    assert (row.read, row.read_time, row.user_seq) == (False, None, 1)
    assert row.id.startswith("ntf_")


async def test_an_order_cancelled_says_what_is_not_charged_and_why(service: Service) -> None:
    await service.order_event("usr_a", "ord_7", cancelled=True, total=(1500, "JPY"), reason="late")
    (row,) = service.of("usr_a")
    assert (row.kind, row.title) == (models.ORDER_CANCELLED, "Order cancelled")
    assert row.body == (
        "Your order ord_7 has been cancelled; 1500 JPY will not be charged. Reason: late"
    )


async def test_a_single_item_is_not_items(service: Service) -> None:
    await service.order_event("usr_a", quantities=(1,), total=(1234, "KWD"))
    assert service.of("usr_a")[0].body == (
        "Your order ord_1 of 1 item totalling 1.234 KWD has been placed."
    )


def test_money_is_written_in_the_currency_s_minor_digits() -> None:
    assert format_money(1999, "EUR") == "19.99 EUR"
    assert format_money(5, "USD") == "0.05 USD"
    assert format_money(-1050, "EUR") == "-10.50 EUR"
    assert format_money(700, "JPY") == "700 JPY"
    assert format_money(1005, "BHD") == "1.005 BHD"


async def test_an_event_delivered_twice_is_stored_once(service: Service) -> None:
    event = await service.order_event("usr_a", "ord_1")
    assert not await service.consumer.apply(event)
    assert not await service.consumer.apply(event)
    assert [(row.event_id, row.user_seq) for row in service.of("usr_a")] == [("evt_1", 1)]
    assert (service.consumer.applied, service.consumer.duplicates) == (1, 2)
    # The duplicates took no number: the next event is the user's second.
    await service.order_event("usr_a", "ord_1", cancelled=True)
    assert [row.user_seq for row in service.of("usr_a")] == [1, 2]


async def test_created_and_cancelled_of_one_order_are_two_notifications(service: Service) -> None:
    await service.order_event("usr_a", "ord_1")
    await service.order_event("usr_a", "ord_1", cancelled=True)
    assert [row.kind for row in service.of("usr_a")] == [
        models.ORDER_PLACED,
        models.ORDER_CANCELLED,
    ]


async def test_each_user_is_numbered_from_one_without_gaps(service: Service) -> None:
    for user_id in ("usr_a", "usr_b", "usr_a", "usr_c", "usr_a", "usr_b"):
        await service.order_event(user_id)
    assert [row.user_seq for row in service.of("usr_a")] == [1, 2, 3]
    assert [row.user_seq for row in service.of("usr_b")] == [1, 2]
    assert [row.user_seq for row in service.of("usr_c")] == [1]


async def test_an_event_of_another_subject_is_applied_and_makes_nothing(service: Service) -> None:
    assert await service.consumer.apply(Event("evt_x", "order.shipped", b"\x00"))
    assert service.repository.rows == []
    assert service.consumer.applied == 1


async def test_storing_wakes_the_user_s_streams_once_committed(service: Service) -> None:
    subscription = service.hub.subscribe("usr_a")
    subscription.clear()
    await service.order_event("usr_a")
    await service.order_event("usr_b")
    assert service.hub.woken == [("usr_a", 1), ("usr_b", 2)], "each after its commit"
    await asyncio.wait_for(subscription.wait(60), 5)


# -- listing and marking ---------------------------------------------------------


async def test_pages_walk_the_user_s_notifications_newest_first_once(service: Service) -> None:
    for i in range(5):
        await service.order_event("usr_a", f"ord_{i}")
    await service.order_event("usr_b", "ord_other")
    seen: list[str] = []
    token = ""
    while True:
        page, token = await service.notifications.list_page("usr_a", False, 2, token)
        assert len(page) <= 2
        seen += [row.order_id for row in page]
        if not token:
            break
    assert seen == [f"ord_{i}" for i in reversed(range(5))]


async def test_unread_only_lists_what_is_not_read(service: Service) -> None:
    for i in range(3):
        await service.order_event("usr_a", f"ord_{i}")
    middle = service.of("usr_a")[1]
    await service.notifications.mark_read("usr_a", [middle.id])
    page, token = await service.notifications.list_page("usr_a", True, None, "")
    assert ([row.order_id for row in page], token) == (["ord_2", "ord_0"], "")


async def test_a_page_token_serves_only_its_own_query(service: Service) -> None:
    for i in range(3):
        await service.order_event("usr_a", f"ord_{i}")
    _, token = await service.notifications.list_page("usr_a", False, 1, "")
    assert token
    for user_id, unread_only, bad in (
        ("usr_b", False, token),
        ("usr_a", True, token),
        ("usr_a", False, "forged"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            await service.notifications.list_page(user_id, unread_only, 1, bad)
        assert [v.field for v in raised.value.violations] == ["page_token"]


async def test_mark_read_marks_what_it_names_and_keeps_the_first_read_time(
    service: Service,
) -> None:
    await service.order_event("usr_a", "ord_1")
    await service.order_event("usr_a", "ord_2")
    first, second = service.of("usr_a")
    (marked,) = await service.notifications.mark_read("usr_a", [first.id])
    assert (marked.id, marked.read) == (first.id, True)
    assert marked.read_time is not None
    both = await service.notifications.mark_read("usr_a", [second.id, first.id])
    assert [row.id for row in both] == [second.id, first.id], "in the order asked"
    assert both[1].read_time == marked.read_time, "marking twice is harmless"
    assert all(row.read for row in service.of("usr_a"))


async def test_unknown_or_another_user_s_ids_change_nothing(service: Service) -> None:
    await service.order_event("usr_a", "ord_1")
    await service.order_event("usr_b", "ord_2")
    (mine,), (theirs,) = service.of("usr_a"), service.of("usr_b")
    for ids, missing in (
        (["ntf_missing", mine.id], ("ntf_missing",)),
        ([mine.id, theirs.id], (theirs.id,)),
    ):
        with pytest.raises(NotFound) as raised:
            await service.notifications.mark_read("usr_a", ids)
        assert raised.value.names == missing
        assert raised.value.reason == "NOTIFICATION_NOT_FOUND"
    assert not mine.read and not theirs.read, "not even the valid ones beside them"


# -- streaming ---------------------------------------------------------------------


async def next_row(stream: AsyncGenerator[NotificationRow, None]) -> NotificationRow:
    return await asyncio.wait_for(anext(stream), 5)


async def test_a_new_stream_gets_the_unread_then_what_comes(service: Service) -> None:
    for i in range(3):
        await service.order_event("usr_a", f"ord_{i}")
    await service.notifications.mark_read("usr_a", [service.of("usr_a")[2].id])
    stream = service.notifications.stream("usr_a", "")
    replayed = [await next_row(stream), await next_row(stream)]
    assert [row.order_id for row in replayed] == ["ord_0", "ord_1"]

    # Next it reads above the newest number, 3 (read, so not replayed), and waits.
    waiting = asyncio.create_task(anext(stream))
    await asyncio.wait_for(service.repository.until_read("after", "usr_a", 3), 5)
    assert not waiting.done()
    await service.order_event("usr_b", "ord_not_mine")
    await service.order_event("usr_a", "ord_new")
    new = await asyncio.wait_for(waiting, 5)
    assert (new.order_id, new.user_seq) == ("ord_new", 4)
    await stream.aclose()
    assert service.hub.open_streams == 0


async def test_heartbeats_come_first_then_after_each_silence_and_never_between_rows() -> None:
    service = Service()
    notifications = Notifications(
        service.repository, TOKENS, service.hub, catch_up_interval=60, heartbeat_interval=0.2
    )
    service.consumer = InMemoryConsumer(notifications, service.repository)
    await service.order_event("usr_a", "ord_0")
    stream = notifications.stream_with_heartbeats("usr_a", "")
    started = asyncio.get_running_loop().time()
    # At once: the heartbeat that says the stream is open, then the unread one.
    assert await asyncio.wait_for(anext(stream), 5) is None
    first = await asyncio.wait_for(anext(stream), 5)
    assert first is not None and first.order_id == "ord_0"
    assert asyncio.get_running_loop().time() - started < 0.15
    # Then silence: a heartbeat once 0.2 s have passed with nothing sent (the wait is
    # bounded by the heartbeat, not by the 60 s catch-up).
    assert await asyncio.wait_for(anext(stream), 5) is None
    assert asyncio.get_running_loop().time() - started >= 0.2
    waiting = asyncio.create_task(anext(stream))
    await service.order_event("usr_a", "ord_1")
    new = await asyncio.wait_for(waiting, 5)
    assert new is not None and new.order_id == "ord_1"
    await stream.aclose()
    # Without asking, a stream never gets one.
    plain = notifications.stream("usr_a", notifications.cursor_of("usr_a", new))
    pending = asyncio.create_task(anext(plain))
    await asyncio.sleep(0.5)
    assert not pending.done()
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    await plain.aclose()
    assert service.hub.open_streams == 0


async def test_a_stream_resumes_after_its_cursor_with_nothing_lost_or_repeated(
    service: Service,
) -> None:
    for i in range(5):
        await service.order_event("usr_a", f"ord_{i}")
    stream = service.notifications.stream("usr_a", "")
    first_two = [await next_row(stream), await next_row(stream)]
    await stream.aclose()
    cursor = service.notifications.cursor_of("usr_a", first_two[-1])
    # Read since: a cursor resumes by number, not by what is unread.
    await service.notifications.mark_read("usr_a", [row.id for row in service.of("usr_a")])
    resumed = service.notifications.stream("usr_a", cursor)
    rest = [await next_row(resumed) for _ in range(3)]
    assert [row.user_seq for row in first_two + rest] == [1, 2, 3, 4, 5]
    await resumed.aclose()


async def test_a_cursor_from_before_per_user_numbers_still_resumes(service: Service) -> None:
    for user_id in ("usr_a", "usr_b", "usr_a", "usr_a"):
        await service.order_event(user_id)
    # The old cursor named the global seq 2 (usr_b's): usr_a had seen its number 1.
    legacy = TOKENS.encode("2", "stream:usr_a")
    stream = service.notifications.stream("usr_a", legacy)
    assert [(await next_row(stream)).user_seq for _ in range(2)] == [2, 3]
    await stream.aclose()


async def test_a_cursor_of_another_user_or_forged_is_refused(service: Service) -> None:
    await service.order_event("usr_b")
    theirs = service.notifications.cursor_of("usr_b", service.of("usr_b")[0])
    for cursor in (theirs, "forged"):
        with pytest.raises(InvalidArgument) as raised:
            await anext(service.notifications.stream("usr_a", cursor))
        assert [v.field for v in raised.value.violations] == ["cursor"]
    assert service.hub.open_streams == 0


async def test_streams_beyond_the_limit_are_refused() -> None:
    service = Service(max_streams=1)
    first = service.notifications.stream("usr_a", "")
    waiting = asyncio.create_task(anext(first))
    await asyncio.wait_for(service.repository.until_read("unread", "usr_a"), 5)
    assert service.hub.open_streams == 1
    with pytest.raises(TooManyStreams) as raised:
        await anext(service.notifications.stream("usr_b", ""))
    assert raised.value.reason == "TOO_MANY_STREAMS"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first.aclose()
    assert service.hub.open_streams == 0


def test_a_feed_event_this_build_does_not_know_is_passed_over_not_stuck_on() -> None:
    # An order event added to the contract later reaches an older notification service as
    # a feed message whose oneof it cannot read: applied as nothing, so the feed moves on.
    newer = order_internal_pb2.StreamOrderEventsResponse(sequence=7)
    newer.MergeFromString(b"\xfa\x01\x02\x08\x01")  # field 31: unknown to this build
    event = event_of(newer)
    assert (event.event_id, event.subject, event.sequence) == ("feed-7", "unknown", 7)
    assert order_events.parse(event) is None
