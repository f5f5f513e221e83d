"""Point reads on the driver itself (SQLite's plain cursor, an asyncpg pool) give exactly
what the engine gives: the same values, converted the same way (datetimes, booleans,
big integers, numerics, NULLs), for the same statement, and see every commit at once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    select,
    text,
)

from services.common.db import Database
from services.common.point_reads import SqlitePointReader
from services.common.times import as_utc
from tests.conftest import postgres_database

METADATA = MetaData()
THINGS = Table(
    "things",
    METADATA,
    Column("id", String(16), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("weight", Numeric(10, 3)),
    Column("seen", DateTime(timezone=True)),
    Column("count", Integer),
)
BY_ID = select(THINGS).where(THINGS.c.id == bindparam("id"))
BY_KIND_AND_SIZE = select(THINGS.c.id, THINGS.c.seen).where(
    THINGS.c.kind == bindparam("kind"), THINGS.c.size >= bindparam("size")
)
ROWS = [
    {
        "id": "a",
        "kind": "big",
        "size": 2**40,
        "active": True,
        "weight": Decimal("1.250"),
        "seen": datetime(2026, 11, 26, 12, 30, 15, 123456, tzinfo=UTC),
        "count": 3,
    },
    {
        "id": "b",
        "kind": "small",
        "size": -1,
        "active": False,
        "weight": None,
        "seen": None,
        "count": None,
    },
]


async def test_point_reads_equal_the_engines_reads(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(METADATA.create_all)
        async with db.write() as session:
            await session.execute(THINGS.insert(), ROWS)
        for statement, params in (
            (BY_ID, {"id": "a"}),
            (BY_ID, {"id": "b"}),
            (BY_ID, {"id": "missing"}),
            (BY_KIND_AND_SIZE, {"kind": "big", "size": 2**40}),
            (BY_KIND_AND_SIZE, {"kind": "big", "size": 2**40 + 1}),
        ):
            async with db.engine.connect() as connection:
                expected = (await connection.execute(statement, params)).mappings().first()
            read = await db.read_one(statement, params)
            assert read == (None if expected is None else dict(expected)), params
        first = await db.read_one(BY_ID, {"id": "a"})
        assert first is not None
        # SQLite keeps no zone (the engine reads naive UTC datetimes, and so does this).
        assert as_utc(first["seen"]) == ROWS[0]["seen"]
        assert (first["size"], first["active"], first["weight"]) == (2**40, True, Decimal("1.250"))
        # A commit is seen by the next read: no snapshot is left open between reads.
        async with db.write() as session:
            await session.execute(THINGS.update().where(THINGS.c.id == "a").values(count=4))
        again = await db.read_one(BY_ID, {"id": "a"})
        assert again is not None and again["count"] == 4
    finally:
        await db.close()


async def test_a_span_only_when_the_trace_is_recorded(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'things.db'}")
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(METADATA.create_all)
    finally:
        await db.close()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    reader = SqlitePointReader(str(tmp_path / "things.db"), 100, tracer)
    try:
        assert reader.read_one(BY_ID, {"id": "none"}) is None
        assert exporter.get_finished_spans() == ()
        with tracer.start_as_current_span("call"):
            assert reader.read_one(BY_ID, {"id": "none"}) is None
        spans = {span.name: span for span in exporter.get_finished_spans()}
        assert set(spans) == {"call", "SELECT"}
        select_span = spans["SELECT"]
        assert select_span.parent is not None
        assert select_span.parent.span_id == spans["call"].context.span_id
        assert "FROM things" in str((select_span.attributes or {})["db.statement"])
    finally:
        reader.close()


async def test_a_loaded_model_reads_and_stores_like_one_made_by_hand(tmp_path: Path) -> None:
    from services.product.models import ProductRow
    from services.product.repository import PRODUCT_BY_ID

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'products.db'}")
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(ProductRow.metadata.create_all)
        now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        values = {
            "id": "prd_1",
            "name": "Mug",
            "description": "",
            "price_currency": "USD",
            "price_amount_minor": 1250,
            "stock": 3,
            "create_time": now,
            "update_time": now,
        }
        async with db.write() as session:
            session.add(ProductRow(**values))
        read = await db.read_model(ProductRow, PRODUCT_BY_ID, {"id": "prd_1"})
        assert isinstance(read, ProductRow)
        assert {key: getattr(read, key) for key in values} == {
            **values,
            "create_time": now.replace(tzinfo=None),
            "update_time": now.replace(tzinfo=None),
        }
        assert await db.read_model(ProductRow, PRODUCT_BY_ID, {"id": "prd_2"}) is None
        # Like any new instance, it can be changed and stored as a new row.
        read.id, read.stock = "prd_2", 7
        async with db.write() as session:
            session.add(read)
        copy = await db.read_model(ProductRow, PRODUCT_BY_ID, {"id": "prd_2"})
        assert copy is not None and (copy.name, copy.stock) == ("Mug", 7)
    finally:
        await db.close()


async def test_a_postgres_connection_dropped_by_the_server_is_replaced() -> None:
    async with postgres_database() as url:
        db = Database(url)
        try:
            async with db.engine.begin() as connection:
                await connection.run_sync(METADATA.create_all)
            async with db.write() as session:
                await session.execute(THINGS.insert(), ROWS)
            assert await db.read_one(BY_ID, {"id": "a"}) is not None
            # The server ends every other session on the database (as a restart does).
            name = url.rsplit("/", 1)[1]
            async with db.engine.connect() as connection:
                ended = await connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                assert ended.scalar_one() >= 1
            read = await db.read_one(BY_ID, {"id": "a"})
            assert read is not None and read["kind"] == "big"
        finally:
            await db.close()


async def test_a_postgres_url_with_driver_options_reads_like_the_engine() -> None:
    """`?ssl=disable&command_timeout=5&prepared_statement_cache_size=100`: the point reads
    connect with the engine's own arguments, not the URL's query as server settings."""
    async with postgres_database() as url:
        db = Database(f"{url}?ssl=disable&command_timeout=5&prepared_statement_cache_size=100")
        try:
            async with db.engine.begin() as connection:
                await connection.run_sync(METADATA.create_all)
            async with db.write() as session:
                await session.execute(THINGS.insert(), ROWS)
            read = await db.read_one(BY_ID, {"id": "a"})
            assert read is not None and read["kind"] == "big"
        finally:
            await db.close()


def test_a_loaded_model_reads_in_a_fresh_process() -> None:
    """`loaded` before any ORM use in the process (the mappers not configured yet): its
    attributes read (they raised AttributeError before)."""
    import subprocess
    import sys

    code = (
        "from services.common.db import loaded\n"
        "from services.user.models import UserRow\n"
        "print(loaded(UserRow, {'id': 'usr_1', 'email': 'a@b.c'}).email)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a@b.c"
