"""The payment events in the order database's outbox, on SQLite and PostgreSQL: a refund
is written with the move REFUNDING -> REFUNDED, once however many calls record it (also
at once), and a failed attempt's PaymentFailed with the move PENDING -> FAILED, once,
never by a later fail() of the same attempt; nothing is written when the move does not
happen."""

from __future__ import annotations

import asyncio
from functools import partial

from sqlalchemy import select

from services.common import migrate
from services.common.db import Database
from services.common.times import utcnow
from services.order.convert import payment_failed, payment_refunded
from services.order.models import (
    PAYMENT_AUTHORIZED,
    PAYMENT_DECLINED,
    PAYMENT_REFUNDED,
    OutboxRow,
    PaymentFailure,
)
from services.order.repository import SqlOrderRepository
from services.order.wiring import SPEC as ORDER
from shop.order.v1 import events_pb2
from tests.integration.test_order_payment_state import announce, attempt


async def outbox(db: Database) -> list[OutboxRow]:
    async with db.read() as session:
        return list((await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all())


async def test_a_refund_is_announced_once_with_the_move_that_records_it(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        repository = SqlOrderRepository(db)
        order = attempt("ord_refund")
        order.total_amount_minor = 1998
        await repository.claim(order)
        order.payment_state = PAYMENT_AUTHORIZED
        assert await repository.place(order, utcnow(), announce) is not None
        await repository.cancel("ord_refund", "changed my mind", utcnow(), announce)
        refunded = partial(payment_refunded, request_id="cancel-ord_refund", voided=False)

        # Five calls record the refund at once: one moves it and writes the event.
        moved = await asyncio.gather(
            *(repository.mark_refunded("ord_refund", refunded) for _ in range(5))
        )
        assert sorted(moved) == [False] * 4 + [True]
        assert not await repository.mark_refunded("ord_refund", refunded)
        stored = await repository.get("ord_refund")
        assert stored is not None and stored.payment_state == PAYMENT_REFUNDED

        rows = await outbox(db)
        assert [row.subject for row in rows] == [
            "order.test",
            "order.test",
            "payment.refunded",
        ]
        event = events_pb2.PaymentRefunded.FromString(rows[-1].payload)
        assert (event.event_id, event.order_id, event.user_id) == (
            rows[-1].event_id,
            "ord_refund",
            "usr_ann",
        )
        assert (event.amount.currency_code, event.amount.amount_minor) == ("EUR", 1998)
        assert (event.refund_request_id, event.reason, event.voided) == (
            "cancel-ord_refund",
            "changed my mind",
            False,
        )
    finally:
        await db.close()


async def test_a_failed_attempt_is_announced_once_with_the_move_to_failed(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        repository = SqlOrderRepository(db)
        await repository.claim(attempt("ord_declined"))
        failure = partial(
            payment_failed, failure=PaymentFailure(PAYMENT_DECLINED, "card_decline", "declined")
        )

        assert await repository.fail("ord_declined", utcnow(), False, failure) is not None
        # Failing it again (the sweeper's pass, a repeat) announces nothing more.
        assert await repository.fail("ord_declined", utcnow(), False, failure) is not None
        await repository.remove_failed("ord_declined")
        assert await repository.fail("ord_declined", utcnow(), False, failure) is None

        [row] = await outbox(db)
        event = events_pb2.PaymentFailed.FromString(row.payload)
        assert (row.subject, event.event_id) == ("payment.failed", row.event_id)
        assert (event.order_id, event.user_id, event.idempotency_key) == (
            "ord_declined",
            "usr_ann",
            "key-ord_declined",
        )
        assert (event.amount.currency_code, event.amount.amount_minor) == ("EUR", 500)
        assert (event.failure, event.decline_code, event.payment_method) == (
            events_pb2.PAYMENT_FAILURE_DECLINED,
            "declined",
            "card_decline",
        )
        assert await repository.get("ord_declined") is None, "the key is free again"
    finally:
        await db.close()
