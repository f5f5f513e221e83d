"""Shared fixtures: real databases (SQLite files, PostgreSQL on 127.0.0.1) and real servers.

PostgreSQL tests skip when nothing answers on 127.0.0.1:5432, unless
SHOP_REQUIRE_SERVICES=1 (set by CI), where a missing server fails the run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from services.common.config import ServiceConfig
from services.common.server import (
    Platform,
    RunningService,
    Servicer,
    ServiceSpec,
    Wired,
    start,
)
from shop.user.v1 import user_pb2, user_pb2_grpc
from tests import tokens

PG_HOST = os.environ.get("SHOP_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SHOP_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SHOP_TEST_PG_USER", "postgres")
REQUIRE_SERVICES = os.environ.get("SHOP_REQUIRE_SERVICES") == "1"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(host: str, port: int, what: str) -> None:
    if _answers(host, port):
        return
    message = f"{what} does not answer on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (SHOP_REQUIRE_SERVICES=1: it must run here)")
    pytest.skip(message)


def pg_admin_dsn(database: str = "postgres") -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards; yields its async URL."""
    require(PG_HOST, PG_PORT, "PostgreSQL")
    name = f"shop_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(pg_admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with postgres_database() as url:
        yield url


def user_service_serving(spec: ServiceSpec, servicer: object) -> ServiceSpec:
    """The user service's spec (its port, its migrations) serving `servicer` as its
    UserService instead of the real one: a probe a test controls."""

    async def wire(platform: Platform) -> Wired[None]:
        return Wired(
            parts=None,
            servicers=[
                Servicer(
                    user_pb2.DESCRIPTOR.services_by_name["UserService"],
                    servicer,
                    user_pb2_grpc.add_UserServiceServicer_to_server,
                )
            ],
        )

    return replace(spec, wire=wire)


def test_config(spec: ServiceSpec, database_url: str, data_dir: Path) -> ServiceConfig:
    base = ServiceConfig.from_env(spec.name, 0)
    return replace(
        base,
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url,
        health_interval=0.2,
        shutdown_grace=1.0,
        auth=tokens.SETTINGS,
        tls=tokens.service_tls(spec.name),
    )


@asynccontextmanager
async def running(
    spec: ServiceSpec, database_url: str, data_dir: Path
) -> AsyncIterator[tuple[RunningService[Any], grpc.aio.Channel]]:
    """The real service on 127.0.0.1, any free port, and a channel to it."""
    service = await start(spec, test_config(spec, database_url, data_dir))
    channel = tokens.admin_channel(service.address)
    try:
        yield service, channel
    finally:
        await channel.close()
        await service.stop(grace=0.5)
