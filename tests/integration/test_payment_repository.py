"""The payment repository's writes on the driver itself, on SQLite and PostgreSQL: a
transition moves a payment once, only from the states given, and returns the row exactly
as the ORM reads it back; a second payment of an order is PaymentExists with the stored
one, also when the twins write at once; and all of it works in a fresh process, where
nothing has configured the ORM's mappers yet."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from services.common import migrate
from services.common.db import Database
from services.common.ids import new_id
from services.common.times import utcnow
from services.payment.models import (
    AUTHORIZED,
    CAPTURED,
    DECLINED,
    FAILED,
    PaymentExists,
    PaymentRow,
)
from services.payment.repository import COLUMNS, SqlPaymentRepository
from services.payment.wiring import SPEC


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await migrate.upgrade(database, SPEC.migrations, SPEC.name)
    try:
        yield database
    finally:
        await database.close()


def payment(order_id: str, state: str = FAILED) -> PaymentRow:
    now = utcnow()
    return PaymentRow(
        id=new_id("pay"),
        order_id=order_id,
        user_id="usr_ann",
        amount_currency="EUR",
        amount_minor=2**40,
        payment_method="card_timeout",
        state=state,
        provider_reference="",
        failure_reason="provider_timeout",
        refund_request_id="",
        refund_reason="",
        create_time=now,
        update_time=now,
    )


def values(row: PaymentRow) -> dict[str, Any]:
    return {key: getattr(row, key) for key in COLUMNS}


async def orm_read(db: Database, payment_id: str) -> dict[str, Any]:
    """The payment as the ORM reads it (what transition returned before it skipped it)."""
    async with db.read() as session:
        row = await session.get(PaymentRow, payment_id)
    assert row is not None
    return values(row)


async def test_a_transition_moves_from_the_given_states_only_and_returns_the_row(
    db: Database,
) -> None:
    repository = SqlPaymentRepository(db)
    failed = payment("ord_1")
    await repository.add(failed)
    stored = await orm_read(db, failed.id)

    assert await repository.transition(failed.id, {AUTHORIZED}, {"state": CAPTURED}) is None
    assert await repository.transition("pay_none", {FAILED}, {"state": CAPTURED}) is None
    assert await orm_read(db, failed.id) == stored

    later = utcnow() + timedelta(seconds=3)
    changes = {
        "update_time": later,
        "state": AUTHORIZED,
        "provider_reference": "ch_1",
        "failure_reason": "",
    }
    settled = await repository.transition(failed.id, {DECLINED, FAILED}, changes)
    assert settled is not None
    assert values(settled) == await orm_read(db, failed.id)
    assert (settled.state, settled.provider_reference, settled.failure_reason) == (
        AUTHORIZED,
        "ch_1",
        "",
    )
    assert settled.amount_minor == 2**40 and settled.create_time == stored["create_time"]
    assert values(await repository.get(failed.id) or failed) == values(settled)

    # Moved on: the same transition is refused, whatever the order of the values.
    again = dict(reversed(changes.items()))
    assert await repository.transition(failed.id, {FAILED, DECLINED}, again) is None


async def test_concurrent_transitions_move_once(db: Database) -> None:
    repository = SqlPaymentRepository(db)
    authorized = payment("ord_c", AUTHORIZED)
    await repository.add(authorized)
    moved = await asyncio.gather(
        *(
            repository.transition(
                authorized.id, {AUTHORIZED}, {"state": CAPTURED, "update_time": utcnow()}
            )
            for _ in range(5)
        )
    )
    winners = [row for row in moved if row is not None]
    assert len(winners) == 1 and winners[0].state == CAPTURED


async def test_a_second_payment_of_an_order_is_payment_exists_with_the_stored_one(
    db: Database,
) -> None:
    repository = SqlPaymentRepository(db)
    first = payment("ord_e")
    await repository.add(first)
    with pytest.raises(PaymentExists) as exists:
        await repository.add(payment("ord_e", AUTHORIZED))
    assert values(exists.value.payment) == await orm_read(db, first.id)

    # Twins at once: one is stored, the others are told which.
    twins = [payment("ord_t") for _ in range(5)]
    results = await asyncio.gather(
        *(repository.add(twin) for twin in twins), return_exceptions=True
    )
    errors = [r for r in results if r is not None]
    assert len(errors) == 4 and all(isinstance(e, PaymentExists) for e in errors)
    stored = await repository.by_order("ord_t")
    assert stored is not None
    assert {e.payment.id for e in errors if isinstance(e, PaymentExists)} == {stored.id}

    # A clash that is not the order's payment is not hidden.
    with pytest.raises(IntegrityError):
        await repository.add(
            PaymentRow(**{**values(payment("ord_other")), "id": first.id}),
        )


# Rows read and written without the ORM are made with `loaded`, whose attributes need the
# mappers configured: in a fresh process nothing else has done that yet.
FRESH_PROCESS = """
import asyncio, sys
from services.common import migrate
from services.common.db import Database
from services.payment.models import Amount
from services.payment.wiring import SPEC

async def main(url, part):
    db = Database(url)
    await migrate.upgrade(db, SPEC.migrations, SPEC.name)
    if part == "provider":
        from services.payment.provider import SimulatedProvider
        outcome = await SimulatedProvider(db).authorize("ord_1", Amount("EUR", 5), "card_approve")
        print(type(outcome).__name__)
    else:
        from services.payment.repository import INSERT_PAYMENT, SqlPaymentRepository
        from services.common.times import utcnow
        now = utcnow()
        async with db.transaction() as tx:
            await tx.execute(INSERT_PAYMENT, dict(
                id="pay_1", order_id="ord_1", user_id="usr_ann", amount_currency="EUR",
                amount_minor=5, payment_method="card_approve", state="AUTHORIZED",
                provider_reference="ch_1", failure_reason="", refund_request_id="",
                refund_reason="", create_time=now, update_time=now))
        repository = SqlPaymentRepository(db)
        found = await repository.by_order("ord_1")
        moved = await repository.transition("pay_1", {"AUTHORIZED"}, {"state": "CAPTURED"})
        print(found.state, moved.state)
    await db.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize(
    ("part", "printed"), [("provider", "Approved"), ("repository", "AUTHORIZED CAPTURED")]
)
async def test_the_first_call_of_a_fresh_process_works(
    tmp_path: Path, part: str, printed: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FRESH_PROCESS,
        url,
        part,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == printed
