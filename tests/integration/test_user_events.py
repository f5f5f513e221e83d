"""The user service announces who is active (UserStatusChanged, through its outbox) and
streams its feed; the order service keeps a replica of it, newest version first. Over
real gRPC and on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from alembic import command
from google.protobuf import duration_pb2, field_mask_pb2
from sqlalchemy import Connection, Table, insert, text, update
from sqlalchemy.exc import DBAPIError

from services.common import migrate
from services.common.db import Database
from services.common.errors import Unavailable
from services.common.events.consumer import Consumer
from services.common.events.envelope import Event
from services.common.events.feed import (
    HEAD,
    HEARTBEAT,
    UNNUMBERED_GRACE,
    Feed,
    FeedFollower,
    Heartbeat,
    OutboxReader,
    opener,
)
from services.common.times import utcnow
from services.common.transactions import Transaction
from services.order.models import ConsumerPositionRow, ProcessedEventRow
from services.order.users import USER_STATUS_CHANGED, UserCheck, UserStatuses
from services.order.wiring import SPEC as ORDER
from services.user.models import OutboxRow
from services.user.wiring import SPEC as USER
from shop.common.v1 import feed_pb2
from shop.user.v1 import events_pb2, user_internal_pb2, user_internal_pb2_grpc, user_pb2
from shop.user.v1 import user_pb2_grpc as user_grpc
from tests import tokens
from tests.conftest import running
from tests.processes import service_process
from tests.rpc import until_quiet
from tests.waits import eventually

pytestmark = pytest.mark.timeout(60)


async def feed(
    channel: grpc.aio.Channel, after: int = 0, wait: float = 1.0
) -> list[user_internal_pb2.StreamUserEventsResponse]:
    """The user service's feed after `after`, read until `wait` passes quietly."""
    stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
    call = stub.StreamUserEvents(user_internal_pb2.StreamUserEventsRequest(after_sequence=after))
    return await until_quiet(call, wait)


def statuses(
    responses: list[user_internal_pb2.StreamUserEventsResponse],
) -> list[tuple[str, bool, int]]:
    return [
        (r.user_status_changed.user_id, r.user_status_changed.active, r.user_status_changed.version)
        for r in responses
    ]


async def test_users_are_announced_when_created_and_when_their_status_changes(
    database_url: str, tmp_path: Path
) -> None:
    async with running(USER, database_url, tmp_path) as (_, channel):
        users = user_grpc.UserServiceStub(channel)
        ann = (
            await users.CreateUser(user_pb2.CreateUserRequest(email="ann@x.io", display_name="A"))
        ).user

        async def update(paths: list[str], **fields: object) -> None:
            await users.UpdateUser(
                user_pb2.UpdateUserRequest(
                    user=user_pb2.User(id=ann.id, **fields),  # type: ignore[arg-type]
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            )

        await update(["display_name"], display_name="Ann")  # not a status: no event
        await update(["active"], active=False)
        await update(["active"], active=True)
        events = await feed(channel)
        assert statuses(events) == [(ann.id, True, 1), (ann.id, False, 3), (ann.id, True, 4)]
        assert [e.sequence for e in events] == [1, 2, 3]
        assert all(e.user_status_changed.event_id.startswith("evt_") for e in events)
        assert events[0].user_status_changed.occurred_at == ann.create_time
        # A consumer resumes after the last sequence it applied.
        assert statuses(await feed(channel, after=2)) == [(ann.id, True, 4)]
        # Bad input: a negative position is refused, in the caller's protocol.
        stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
        call = stub.StreamUserEvents(user_internal_pb2.StreamUserEventsRequest(after_sequence=-1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_feed_opens_with_its_head_before_any_event(
    database_url: str, tmp_path: Path
) -> None:
    """A feed answers at once with the position of its last event (none yet: 0), so its
    follower knows it is connected and when it has caught up."""
    async with running(USER, database_url, tmp_path) as (_, channel):
        stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
        call = stub.StreamUserEvents(user_internal_pb2.StreamUserEventsRequest(after_sequence=0))
        try:
            async with asyncio.timeout(5):
                headers = await call.initial_metadata()
            assert (HEAD, "0") in list(headers)
            assert not call.done()  # open, not refused
        finally:
            call.cancel()
        users = user_grpc.UserServiceStub(channel)
        for n in range(2):
            await users.CreateUser(user_pb2.CreateUserRequest(email=f"u{n}@x.io", display_name="U"))
        await eventually(lambda: _head_is(channel, "2"), "the head moved on")


async def _head_is(channel: grpc.aio.Channel, expected: str) -> bool:
    stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
    call = stub.StreamUserEvents(user_internal_pb2.StreamUserEventsRequest(after_sequence=0))
    try:
        return (HEAD, expected) in list(await call.initial_metadata())
    finally:
        call.cancel()


async def test_the_migration_announces_every_user_there_was_and_guards_the_status(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:

        def to_0002(connection: Connection) -> None:
            command.upgrade(migrate.alembic_config(USER.migrations, connection), "0002")

        async with db.engine.connect() as connection:
            await connection.run_sync(to_0002)
            await connection.execute(
                text(
                    "INSERT INTO users (id, email, display_name, active, create_time,"
                    " update_time) VALUES ('usr_old', 'old@x.io', 'Old', true,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), ('usr_gone', 'gone@x.io', 'Gone',"
                    " false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            await connection.commit()
        await migrate.upgrade(db, USER.migrations, USER.name)
        async with db.engine.connect() as connection:
            versions = (await connection.execute(text("SELECT version FROM users"))).all()
            rows = (
                await connection.execute(text("SELECT subject, payload FROM outbox ORDER BY id"))
            ).all()
        assert [v for (v,) in versions] == [1, 1]
        assert {subject for subject, _ in rows} == {USER_STATUS_CHANGED}
        announced = [events_pb2.UserStatusChanged.FromString(payload) for _, payload in rows]
        assert sorted((e.user_id, e.active, e.version) for e in announced) == [
            ("usr_gone", False, 1),
            ("usr_old", True, 1),
        ]
        # Every change of `active` needs a new version (and so its event): a writer
        # that does not announce (an older replica) is refused, and nothing changes.
        async with db.engine.connect() as connection:
            with pytest.raises(DBAPIError, match="must come with a new version"):
                await connection.execute(
                    text("UPDATE users SET active = false WHERE id = 'usr_old'")
                )
            await connection.rollback()
            await connection.execute(
                text("UPDATE users SET display_name = 'Older' WHERE id = 'usr_old'")
            )
            await connection.execute(
                text("UPDATE users SET active = false, version = 2 WHERE id = 'usr_old'")
            )
            await connection.commit()
            stored = (
                await connection.execute(
                    text("SELECT display_name, active, version FROM users WHERE id = 'usr_old'")
                )
            ).one()
        assert (stored[0], bool(stored[1]), stored[2]) == ("Older", False, 2)
    finally:
        await db.close()


def status_event(event_id: str, user_id: str, active: bool, version: int) -> Event:
    message = events_pb2.UserStatusChanged(
        event_id=event_id, user_id=user_id, active=active, version=version
    )
    return Event(event_id, USER_STATUS_CHANGED, message.SerializeToString())


async def test_the_replica_keeps_each_users_newest_status(database_url: str) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        replica = UserStatuses(db)
        consumer = Consumer(db, "test", replica.handle, ProcessedEventRow, ConsumerPositionRow)
        assert not await replica.known_active("usr_ann")
        assert await consumer.apply(status_event("e1", "usr_ann", True, 1))
        assert await replica.known_active("usr_ann")
        assert await consumer.apply(status_event("e3", "usr_ann", False, 3))
        assert not await replica.known_active("usr_ann")
        # Delivered late (another replica, a redelivery): an older version changes nothing.
        assert await consumer.apply(status_event("e2", "usr_ann", True, 2))
        assert not await replica.known_active("usr_ann")
        # Delivered again: skipped.
        assert not await consumer.apply(status_event("e3", "usr_ann", False, 3))
        assert await consumer.apply(status_event("e4", "usr_ann", True, 4))
        assert await replica.known_active("usr_ann")
        # Another user's status is its own; an event of another kind is recorded, nothing more.
        assert not await replica.known_active("usr_bob")
        assert await consumer.apply(Event("e5", "user.renamed", b"\x00"))
        assert await replica.known_active("usr_ann") and not await replica.known_active("usr_bob")
    finally:
        await db.close()


async def test_the_check_asks_the_user_service_unless_the_replica_spares_it(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        replica = UserStatuses(db)
        consumer = Consumer(db, "test", replica.handle, ProcessedEventRow, ConsumerPositionRow)
        await consumer.apply(status_event("e1", "usr_ann", True, 1))
        await consumer.apply(status_event("e2", "usr_bob", False, 2))
        asked: list[str] = []
        following = True

        async def ask(user_id: str) -> None:
            asked.append(user_id)
            raise Unavailable("user service is unavailable", "USER_UNAVAILABLE")

        check = UserCheck(replica, ask, lambda: following)
        await check.active_user("usr_ann")  # known active, kept up: not asked
        assert asked == []
        for user_id in ("usr_bob", "usr_new"):  # inactive, unknown: the user service says
            await fails_with_unavailable(check.active_user(user_id))
        assert asked == ["usr_bob", "usr_new"]
        following = False  # not kept up: even a known active user is asked about
        await fails_with_unavailable(check.active_user("usr_ann"))
        assert asked == ["usr_bob", "usr_new", "usr_ann"]
    finally:
        await db.close()


async def fails_with_unavailable(call: Awaitable[None]) -> None:
    with pytest.raises(Unavailable):
        await call


async def test_the_follower_follows_once_it_has_caught_up_with_the_head(
    database_url: str, tmp_path: Path
) -> None:
    """Stored statuses are trusted only once the replica has applied the feed up to the
    head it opened with; a stream without a head (refused, or an older producer), or a
    consumer already past the head (the producer's outbox went back), never counts as
    followed."""
    async with running(USER, database_url, tmp_path) as (_, channel):
        users = user_grpc.UserServiceStub(channel)
        ids = [
            (
                await users.CreateUser(
                    user_pb2.CreateUserRequest(email=f"f{n}@x.io", display_name="F")
                )
            ).user.id
            for n in range(3)
        ]
        await eventually(lambda: _head_is(channel, "3"), "three users announced")
        replica_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order.db'}")
        await migrate.upgrade(replica_db, ORDER.migrations, ORDER.name)
        replica = UserStatuses(replica_db)
        gate, blocked = asyncio.Event(), asyncio.Event()

        async def handle(tx: Transaction, event: Event) -> None:
            blocked.set()
            await gate.wait()
            await replica.handle(tx, event)

        def consumer(name: str) -> Consumer:
            return Consumer(replica_db, name, handle, ProcessedEventRow, ConsumerPositionRow)

        stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
        feed = opener(stub.StreamUserEvents, user_internal_pb2.StreamUserEventsRequest)
        follower = FeedFollower("user", feed, consumer("test"))
        nothing = channel.unary_stream(
            "/shop.user.v1.UserInternalService/StreamNothing",
            request_serializer=user_internal_pb2.StreamUserEventsRequest.SerializeToString,
            response_deserializer=user_internal_pb2.StreamUserEventsResponse.FromString,
        )
        refused = FeedFollower(
            "nothing", opener(nothing, user_internal_pb2.StreamUserEventsRequest), consumer("x")
        )
        # A consumer that has applied up to position 10 of a feed whose head is now 3.
        ahead_of_it = Consumer(
            replica_db, "ahead", replica.handle, ProcessedEventRow, ConsumerPositionRow
        )
        await ahead_of_it.apply(status_event("e-old", "usr_zed", True, 1), position=10)
        ahead = FeedFollower("user", feed, ahead_of_it)
        tasks = [asyncio.create_task(f.run()) for f in (follower, refused, ahead)]
        try:
            async with asyncio.timeout(5):
                await blocked.wait()
            assert not follower.following(), "open, but three events behind"
            gate.set()
            await eventually(follower.following, "caught up")
            assert [await replica.known_active(i) for i in ids] == [True, True, True]
            for _ in range(50):  # for a while, through the refused stream's retries
                assert not refused.following() and not ahead.following()
                await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await replica_db.close()


async def test_a_replica_that_cannot_be_read_leaves_the_answer_to_the_user_service() -> None:
    class Unreadable:
        async def known_active(self, user_id: str) -> bool:
            raise OSError("disk I/O error")

    asked: list[str] = []

    async def ask(user_id: str) -> None:
        asked.append(user_id)

    check = UserCheck(Unreadable(), ask, lambda: True)  # type: ignore[arg-type]
    await check.active_user("usr_ann")
    assert asked == ["usr_ann"] and (check.spared, check.asked) == (0, 1)


async def message_of(call: Any) -> user_internal_pb2.StreamUserEventsResponse:
    message = await call.read()
    assert isinstance(message, user_internal_pb2.StreamUserEventsResponse), message
    return message


def every(seconds: float) -> duration_pb2.Duration:
    interval = duration_pb2.Duration()
    interval.FromTimedelta(timedelta(seconds=seconds))
    return interval


async def test_the_feed_sends_heartbeats_with_its_head_when_asked(
    database_url: str, tmp_path: Path
) -> None:
    """Asked for them, a feed says it is alive every interval while it has no event to
    send, with its head; not asked, it sends none. Bad intervals are refused."""
    async with running(USER, database_url, tmp_path) as (_, channel):
        users = user_grpc.UserServiceStub(channel)
        await users.CreateUser(user_pb2.CreateUserRequest(email="hb@x.io", display_name="H"))
        await eventually(lambda: _head_is(channel, "1"), "the user announced")
        stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
        call = stub.StreamUserEvents(
            user_internal_pb2.StreamUserEventsRequest(
                after_sequence=0, heartbeat_interval=every(0.2)
            )
        )
        try:
            headers = list(await call.initial_metadata())
            assert (HEAD, "1") in headers and (HEARTBEAT, "0.2") in headers
            first = await message_of(call)
            assert first.sequence == 1 and first.HasField("user_status_changed")
            assert not first.HasField("heartbeat")
            started = time.monotonic()
            beats = [await message_of(call) for _ in range(3)]
            took = time.monotonic() - started
            assert [b.heartbeat.head for b in beats] == [1, 1, 1]
            assert all(b.sequence == 0 and b.WhichOneof("event") is None for b in beats)
            assert 0.3 <= took < 2.0, took  # about one every 0.2 s, not a flood
            # A new event comes at once, and the heartbeats after it carry the new head.
            await users.CreateUser(user_pb2.CreateUserRequest(email="hb2@x.io", display_name="H"))
            async with asyncio.timeout(5):
                while not (message := await message_of(call)).HasField("user_status_changed"):
                    pass
                assert message.sequence == 2
                assert (await message_of(call)).heartbeat.head == 2
        finally:
            call.cancel()
        # Not asked: no header, and only events.
        plain = stub.StreamUserEvents(user_internal_pb2.StreamUserEventsRequest(after_sequence=0))
        try:
            assert HEARTBEAT not in dict(await plain.initial_metadata())
        finally:
            plain.cancel()
        quiet = await feed(channel, wait=0.6)
        assert [m.sequence for m in quiet] == [1, 2]
        assert not any(m.HasField("heartbeat") for m in quiet)
        # Bad input: an interval of 0, below 0.1 s, beyond 60 s, or negative.
        for seconds in (0, 0.05, 61, -1):
            refused = stub.StreamUserEvents(
                user_internal_pb2.StreamUserEventsRequest(heartbeat_interval=every(seconds))
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await refused.read()
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, seconds


async def test_a_feed_whose_relay_is_stuck_sends_no_heartbeat(database_url: str) -> None:
    """An event committed a while ago and still without a position (its relay stuck) is
    one the feed cannot vouch for: no heartbeat until it has been numbered and sent."""
    db = Database(database_url)
    await migrate.upgrade(db, USER.migrations, USER.name)
    outbox = cast(Table, OutboxRow.__table__)
    feed = Feed(OutboxReader(db, OutboxRow))
    sent: list[Event | Heartbeat] = []

    async def follow() -> None:
        async for item in feed.events_and_heartbeats(0, 0.1):
            sent.append(item)

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.5)
        assert sent and set(sent) == {Heartbeat(head=0)}, "an empty feed beats"
        async with db.write() as session:
            await session.execute(
                insert(outbox).values(
                    event_id="evt_stuck",
                    subject=USER_STATUS_CHANGED,
                    payload=b"",
                    headers={},
                    create_time=utcnow() - timedelta(seconds=UNNUMBERED_GRACE + 1),
                )
            )
        await asyncio.sleep(0.3)
        sent.clear()
        await asyncio.sleep(0.6)  # six intervals
        assert sent == []
        async with db.write() as session:
            numbered = update(outbox).where(outbox.c.event_id == "evt_stuck")
            await session.execute(numbered.values(position=1, publish_time=utcnow()))
        feed.published.fire()
        await eventually(lambda: Heartbeat(head=1) in sent, "beating again")
        event = sent[0]
        assert isinstance(event, Event) and event.event_id == "evt_stuck"
        assert sent[1] == Heartbeat(head=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()


async def test_a_hung_user_service_is_not_trusted_though_its_connection_stays_up(
    tmp_path: Path,
) -> None:
    """The user service's process stopped (SIGSTOP: its sockets stay open, nothing
    answers): the follower stops trusting the replica within a few heartbeats, well
    before a keepalive could tell; resumed, it is trusted again on the same stream."""
    env = {"DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    async with service_process("user", env) as user:
        admin, channel = tokens.admin_channel(user.address), tokens.service_channel(user.address)
        replica_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order.db'}")
        follower: FeedFollower | None = None
        task: asyncio.Task[None] | None = None
        try:
            await migrate.upgrade(replica_db, ORDER.migrations, ORDER.name)
            replica = UserStatuses(replica_db)
            consumer = Consumer(
                replica_db, "test", replica.handle, ProcessedEventRow, ConsumerPositionRow
            )
            await user_grpc.UserServiceStub(admin).CreateUser(
                user_pb2.CreateUserRequest(email="hung@x.io", display_name="H")
            )
            stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
            request = user_internal_pb2.StreamUserEventsRequest
            opens = opener(stub.StreamUserEvents, request, 0.3)
            opened: list[int] = []

            def counted(after: int) -> grpc.aio.UnaryStreamCall[Any, Any]:
                opened.append(after)
                return opens(after)

            follower = FeedFollower("user", counted, consumer)
            task = asyncio.create_task(follower.run())
            await eventually(follower.following, "caught up")
            await asyncio.sleep(1.0)  # three intervals and more: the heartbeats keep it
            assert follower.following()
            user.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await eventually(lambda: not follower.following(), "the silence noticed", within=5)
            # Three missed heartbeats (0.9 s) plus one: not a keepalive (about 15 s).
            assert time.monotonic() - stopped < 2.5
            user.signal(signal.SIGCONT)
            await eventually(follower.following, "trusted again", within=10)
            assert len(opened) == 1  # the same stream: silence, not a cut
        finally:
            user.signal(signal.SIGCONT)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await admin.close()
            await channel.close()
            await replica_db.close()


class ScriptedFeed(user_internal_pb2_grpc.UserInternalServiceServicer):
    """A user feed whose every message the test sends (`send`), announcing heartbeats
    every 0.2 s: the follower's side of the heartbeats, message by message."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[user_internal_pb2.StreamUserEventsResponse] = asyncio.Queue()
        self.opened = 0
        # The opens (1, 2, ...) that hang before their headers, as a hung producer would.
        self.hang_opens: set[int] = set()
        self.head = 1  # what the headers say

    async def ValidateUser(
        self, request: user_internal_pb2.ValidateUserRequest, context: Any
    ) -> user_internal_pb2.ValidateUserResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
        raise AssertionError("unreachable")

    async def StreamUserEvents(
        self, request: user_internal_pb2.StreamUserEventsRequest, context: Any
    ) -> Any:
        self.opened += 1
        if self.opened in self.hang_opens:
            await asyncio.Event().wait()
        await context.send_initial_metadata(((HEAD, str(self.head)), (HEARTBEAT, "0.2")))
        while True:
            yield await self.messages.get()

    def event(self, sequence: int, version: int) -> None:
        changed = events_pb2.UserStatusChanged(
            event_id=f"e{sequence}", user_id="usr_ann", active=True, version=version
        )
        self.messages.put_nowait(
            user_internal_pb2.StreamUserEventsResponse(
                sequence=sequence, user_status_changed=changed
            )
        )

    def heartbeat(self, head: int) -> None:
        self.messages.put_nowait(
            user_internal_pb2.StreamUserEventsResponse(heartbeat=feed_pb2.FeedHeartbeat(head=head))
        )


async def test_a_feed_with_heartbeats_is_trusted_up_to_a_heartbeats_head_while_heard(
    tmp_path: Path,
) -> None:
    """Not on the head it opened with (no relay check stands behind it); up to each
    heartbeat's head; not after three intervals of silence, and then not on an event
    either, until a new heartbeat; reopened after ten intervals of silence, and again when
    the reopening hangs before its headers."""
    scripted = ScriptedFeed()
    server = grpc.aio.server()
    user_internal_pb2_grpc.add_UserInternalServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    replica_db = Database(f"sqlite+aiosqlite:///{tmp_path / 'order.db'}")
    task: asyncio.Task[None] | None = None
    try:
        await migrate.upgrade(replica_db, ORDER.migrations, ORDER.name)
        replica = UserStatuses(replica_db)
        consumer = Consumer(
            replica_db, "test", replica.handle, ProcessedEventRow, ConsumerPositionRow
        )
        stub = user_internal_pb2_grpc.UserInternalServiceStub(channel)
        request = user_internal_pb2.StreamUserEventsRequest
        follower = FeedFollower("user", opener(stub.StreamUserEvents, request, 0.2), consumer)
        task = asyncio.create_task(follower.run())

        async def position_is(expected: int) -> bool:
            return await consumer.position() == expected

        scripted.event(1, 1)
        await eventually(lambda: position_is(1), "event 1 applied")
        assert follower.heartbeats == 0.2
        assert not follower.following(), "at the head it opened with, but no heartbeat yet"
        scripted.heartbeat(1)
        await eventually(follower.following, "trusted up to heartbeat 1")
        scripted.heartbeat(2)
        await eventually(lambda: not follower.following(), "heartbeat 2 is ahead of it")
        scripted.event(2, 2)
        await eventually(follower.following, "caught up with heartbeat 2")
        await eventually(lambda: not follower.following(), "silent for three intervals")
        scripted.event(3, 3)
        await eventually(lambda: position_is(3), "event 3 applied")
        await asyncio.sleep(0.1)
        assert not follower.following(), "after a silence, an event alone is not enough"
        scripted.heartbeat(3)
        await eventually(follower.following, "trusted again on a new heartbeat")
        assert scripted.opened == 1  # all on one stream
        # Silent for ten intervals (2 s): reopened, from where it stood; a reopening that
        # does not even send its headers within ten intervals is tried again.
        scripted.hang_opens.add(2)
        scripted.head = 3
        await eventually(lambda: scripted.opened == 2, "reopened", within=5)
        assert not follower.following()
        await eventually(lambda: scripted.opened == 3, "opened once more", within=5)
        scripted.heartbeat(3)
        await eventually(follower.following, "trusted on the third stream")
        assert await consumer.position() == 3
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await channel.close()
        await server.stop(None)
        await replica_db.close()
