"""Stores and products: plain admin CRUD through the ORM."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crud import get_or_404, page_by_id
from app.core.problems import ValidationFailed
from app.promos.errors import InUse
from app.promos.models import Product, Promo, Store


def unknown_reference(field: str, value: uuid.UUID, what: str) -> ValidationFailed:
    return ValidationFailed(
        f"No {what} {value}.", errors=[{"loc": ["body", field], "msg": f"unknown {what}"}]
    )


# Stores


async def create_store(session: AsyncSession, fields: dict[str, Any]) -> Store:
    store = Store(**fields)
    session.add(store)
    await session.flush()
    await session.refresh(store)
    return store


async def get_store(session: AsyncSession, store_id: uuid.UUID) -> Store:
    return await get_or_404(session, Store, store_id, "store")


async def list_stores(session: AsyncSession, limit: int, after: uuid.UUID | None) -> list[Store]:
    """Stores in id order, keyset-paginated."""
    return await page_by_id(session, Store, limit, after)


async def update_store(
    session: AsyncSession, store_id: uuid.UUID, changes: dict[str, Any]
) -> Store:
    store = await get_store(session, store_id)
    for name, value in changes.items():
        setattr(store, name, value)
    await session.flush()
    return store


async def delete_store(session: AsyncSession, store_id: uuid.UUID) -> None:
    """Delete a store that sells nothing; one with products is 409."""
    store = await get_store(session, store_id)
    if await session.scalar(select(exists().where(Product.store_id == store_id))):
        raise InUse(f"Store {store_id} still has products; delete them first.")
    await session.delete(store)
    try:
        await session.flush()
    except IntegrityError as exc:  # a product was added meanwhile
        raise InUse(f"Store {store_id} still has products; delete them first.") from exc


# Products


async def create_product(session: AsyncSession, fields: dict[str, Any]) -> Product:
    if await session.get(Store, fields["store_id"]) is None:
        raise unknown_reference("store_id", fields["store_id"], "store")
    product = Product(**fields)
    session.add(product)
    await session.flush()
    await session.refresh(product)
    return product


async def get_product(session: AsyncSession, product_id: uuid.UUID) -> Product:
    return await get_or_404(session, Product, product_id, "product")


async def list_products(
    session: AsyncSession, limit: int, after: uuid.UUID | None, store_id: uuid.UUID | None
) -> list[Product]:
    """Products in id order, keyset-paginated, optionally of one store."""
    where = [Product.store_id == store_id] if store_id is not None else []
    return await page_by_id(session, Product, limit, after, *where)


async def update_product(
    session: AsyncSession, product_id: uuid.UUID, changes: dict[str, Any]
) -> Product:
    product = await get_product(session, product_id)
    store_id = changes.get("store_id")
    if store_id is not None and await session.get(Store, store_id) is None:
        raise unknown_reference("store_id", store_id, "store")
    for name, value in changes.items():
        setattr(product, name, value)
    await session.flush()
    return product


async def delete_product(session: AsyncSession, product_id: uuid.UUID) -> None:
    """Delete a product on no promo; one with promos is 409."""
    product = await get_product(session, product_id)
    if await session.scalar(select(exists().where(Promo.product_id == product_id))):
        raise InUse(f"Product {product_id} is on promos; delete or keep them.")
    await session.delete(product)
    try:
        await session.flush()
    except IntegrityError as exc:  # a promo was added meanwhile
        raise InUse(f"Product {product_id} is on promos; delete or keep them.") from exc
