"""The order database's payment_state (migration 0002) on SQLite and PostgreSQL: orders
stored before it have NONE, and the repository's steps move it as the saga needs (place,
capture, cancel, refund, fail) with the sweeper's look-ups finding exactly the orders
left to finish."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import Connection, text

from services.common import migrate
from services.common.db import Database
from services.common.events.envelope import Event
from services.common.times import utcnow
from services.order.models import (
    CANCELLED,
    FAILED,
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURED,
    PAYMENT_NONE,
    PAYMENT_REFUNDED,
    PAYMENT_REFUNDING,
    PAYMENT_VOIDING,
    PENDING,
    OrderRow,
)
from services.order.repository import Abandoned, SqlOrderRepository
from services.order.wiring import SPEC as ORDER


def announce(order: OrderRow) -> Event:
    return Event(f"evt_{order.id}_{order.status}", "order.test", b"")


async def state_of(repository: SqlOrderRepository, order_id: str) -> str:
    order = await repository.get(order_id)
    assert order is not None
    return order.payment_state


def attempt(order_id: str, *, age: timedelta = timedelta()) -> OrderRow:
    created = utcnow() - age
    return OrderRow(
        id=order_id,
        user_id="usr_ann",
        status=PENDING,
        idempotency_key=f"key-{order_id}",
        request_fingerprint="x",
        reservation_id=f"res_{order_id}",
        currency_code="EUR",
        total_amount_minor=500,
        cancel_reason="",
        stock_released=False,
        payment_state=PAYMENT_NONE,
        create_time=created,
        update_time=created,
        items=[],
    )


async def test_orders_stored_before_payments_have_none_to_act_on(database_url: str) -> None:
    db = Database(database_url)
    try:

        def to_0001(connection: Connection) -> None:
            command.upgrade(migrate.alembic_config(ORDER.migrations, connection), "0001")

        async with db.engine.connect() as connection:
            await connection.run_sync(to_0001)
            await connection.execute(
                text(
                    "INSERT INTO orders (id, user_id, status, idempotency_key,"
                    " request_fingerprint, reservation_id, currency_code, total_amount_minor,"
                    " cancel_reason, stock_released, create_time, update_time) VALUES"
                    " ('ord_old', 'usr_ann', 'PLACED', 'old-key', 'x', 'res_ord_old', 'EUR',"
                    " 500, '', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            await connection.commit()
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        repository = SqlOrderRepository(db)
        old = await repository.get("ord_old")
        assert old is not None and old.payment_state == PAYMENT_NONE
        # Cancelling it refunds nothing: there is no payment to give back.
        cancelled = await repository.cancel("ord_old", "", utcnow(), announce)
        assert cancelled is not None and cancelled.payment_state == PAYMENT_NONE
        assert await repository.unrefunded() == []
    finally:
        await db.close()


async def test_the_payment_state_follows_the_saga(database_url: str) -> None:
    db = Database(database_url)
    try:
        await migrate.upgrade(db, ORDER.migrations, ORDER.name)
        repository = SqlOrderRepository(db)
        now = utcnow()

        # Placed with its money held; the sweeper's capture look-up waits for it to age.
        order = attempt("ord_paid")
        await repository.claim(order)
        order.payment_state = PAYMENT_AUTHORIZED
        placed = await repository.place(order, now, announce)
        assert placed is not None
        assert await state_of(repository, "ord_paid") == PAYMENT_AUTHORIZED
        assert await repository.uncaptured(now - timedelta(seconds=5)) == []
        assert await repository.uncaptured(now + timedelta(seconds=1)) == ["ord_paid"]
        await repository.mark_captured(["ord_paid"])
        assert await state_of(repository, "ord_paid") == PAYMENT_CAPTURED
        assert await repository.uncaptured(now + timedelta(seconds=1)) == []

        # Cancelled: the refund is to do until it is marked done.
        cancelled = await repository.cancel("ord_paid", "no", now, announce)
        assert cancelled is not None
        assert (cancelled.status, cancelled.payment_state) == (CANCELLED, PAYMENT_REFUNDING)
        assert await repository.unrefunded() == ["ord_paid"]
        await repository.mark_refunded("ord_paid")
        await repository.mark_captured(["ord_paid"])  # late: changes nothing any more
        assert await state_of(repository, "ord_paid") == PAYMENT_REFUNDED
        assert await repository.unrefunded() == []

        # Several at once (a batch of captures), in one transaction: each AUTHORIZED one
        # moves, the refunded one stays as it is.
        for order_id in ("ord_a", "ord_b"):
            order = attempt(order_id)
            await repository.claim(order)
            order.payment_state = PAYMENT_AUTHORIZED
            assert await repository.place(order, now, announce) is not None
        await repository.mark_captured(["ord_a", "ord_paid", "ord_b"])
        assert [await state_of(repository, o) for o in ("ord_a", "ord_paid", "ord_b")] == [
            PAYMENT_CAPTURED,
            PAYMENT_REFUNDED,
            PAYMENT_CAPTURED,
        ]

        # An attempt that failed before authorizing voids nothing; once it may have
        # authorized, it stays to void; a stale one (its process died) always is.
        await repository.claim(attempt("ord_failed"))
        assert await repository.fail("ord_failed", now, False) == Abandoned("res_ord_failed", False)
        assert await repository.fail("ord_failed", now, True) == Abandoned("res_ord_failed", True)
        assert await repository.fail("ord_failed", now, False) == Abandoned("res_ord_failed", True)
        await repository.claim(attempt("ord_dead", age=timedelta(minutes=1)))
        assert await repository.fail_stale(now - timedelta(seconds=25), now) == ["ord_dead"]
        dead = await repository.get("ord_dead")
        assert dead is not None and (dead.status, dead.payment_state) == (FAILED, PAYMENT_VOIDING)
        assert sorted(await repository.failed()) == ["ord_dead", "ord_failed"]
        assert await repository.fail("ord_paid", now, True) is None, "never a placed order"
        assert await state_of(repository, "ord_paid") == PAYMENT_REFUNDED
    finally:
        await db.close()
