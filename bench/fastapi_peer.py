"""The peer a user would write instead: FastAPI + SQLAlchemy (async ORM) + aiosqlite,
serving one product row by primary key as JSON. Run with uvicorn, one worker."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str]
    price_currency: Mapped[str]
    price_amount_minor: Mapped[int]
    stock: Mapped[int]


engine = create_async_engine(os.environ.get("PEER_DATABASE_URL", "sqlite+aiosqlite:///peer.db"))
sessions = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with sessions() as session, session.begin():
        if await session.get(Product, "prd_peer") is None:
            session.add(
                Product(
                    id="prd_peer",
                    name="Mug",
                    price_currency="EUR",
                    price_amount_minor=1299,
                    stock=10,
                )
            )
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/products/{product_id}")
async def get_product(product_id: str) -> dict[str, object]:
    async with sessions() as session:
        product = await session.get(Product, product_id)
    if product is None:
        raise HTTPException(404, "product not found")
    return {
        "product": {
            "id": product.id,
            "name": product.name,
            "price": {
                "currencyCode": product.price_currency,
                "amountMinor": str(product.price_amount_minor),
            },
            "stock": product.stock,
        }
    }
