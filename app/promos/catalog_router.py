"""HTTP routes for stores and products (admin CRUD)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.api.deps import AdminUser, Audit, Idempotent, Session
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, uuid_cursor
from app.promos import catalog
from app.promos.paging import page_by_id
from app.promos.schemas import ProductIn, ProductOut, ProductPatch, StoreIn, StoreOut, StorePatch

router = APIRouter()
PREFIX = "/api/v1"
ADMIN = (*AUTH, 403)


# Stores (admin)


@router.post(
    "/stores",
    status_code=status.HTTP_201_CREATED,
    response_model=StoreOut,
    responses=problems(*ADMIN, 409),
    tags=["stores"],
)
async def create_store(
    body: StoreIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    audit: Audit,
) -> StoreOut:
    """Create a store at `lat`/`lng` (degrees); promos are offered around it."""
    out = StoreOut.model_validate(await catalog.create_store(session, body.model_dump()))
    await audit.record(session, "store.create", "store", out.id, after=out)
    response.headers["Location"] = f"{PREFIX}/stores/{out.id}"
    await idem.remember(201, out)
    return out


@router.get("/stores", response_model=Page[StoreOut], responses=problems(*ADMIN), tags=["stores"])
async def list_stores(
    admin: AdminUser, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[StoreOut]:
    """Stores, keyset-paginated by id."""
    stores = await catalog.list_stores(session, limit + 1, uuid_cursor(cursor))
    page, next_cursor = page_by_id(stores, limit)
    return Page[StoreOut](items=[StoreOut.model_validate(s) for s in page], next_cursor=next_cursor)


@router.get(
    "/stores/{store_id}",
    response_model=StoreOut,
    responses=problems(*ADMIN, 404),
    tags=["stores"],
)
async def get_store(store_id: uuid.UUID, admin: AdminUser, session: Session) -> StoreOut:
    """One store."""
    return StoreOut.model_validate(await catalog.get_store(session, store_id))


@router.patch(
    "/stores/{store_id}",
    response_model=StoreOut,
    responses=problems(*ADMIN, 404, 409),
    tags=["stores"],
)
async def patch_store(
    store_id: uuid.UUID, body: StorePatch, admin: AdminUser, session: Session, audit: Audit
) -> StoreOut:
    """Change any field; `address` may be set to null."""
    before = StoreOut.model_validate(await catalog.get_store(session, store_id))
    after = StoreOut.model_validate(await catalog.update_store(session, store_id, body.changes()))
    await audit.changed(session, "store.update", "store", store_id, before, after)
    return after


@router.delete(
    "/stores/{store_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*ADMIN, 404, 409),
    tags=["stores"],
)
async def delete_store(
    store_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> None:
    """Delete a store without products (else 409 `conflict`)."""
    before = StoreOut.model_validate(await catalog.get_store(session, store_id))
    await catalog.delete_store(session, store_id)
    await audit.record(session, "store.delete", "store", store_id, before=before)


# Products (admin)


@router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    response_model=ProductOut,
    responses=problems(*ADMIN, 409),
    tags=["products"],
)
async def create_product(
    body: ProductIn,
    admin: AdminUser,
    session: Session,
    response: Response,
    idem: Idempotent,
    audit: Audit,
) -> ProductOut:
    """Create a product of a store (an unknown `store_id` is 422)."""
    out = ProductOut.model_validate(await catalog.create_product(session, body.model_dump()))
    await audit.record(session, "product.create", "product", out.id, after=out)
    response.headers["Location"] = f"{PREFIX}/products/{out.id}"
    await idem.remember(201, out)
    return out


@router.get(
    "/products", response_model=Page[ProductOut], responses=problems(*ADMIN), tags=["products"]
)
async def list_products(
    admin: AdminUser,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
    store_id: uuid.UUID | None = None,
) -> Page[ProductOut]:
    """Products, keyset-paginated by id."""
    products = await catalog.list_products(session, limit + 1, uuid_cursor(cursor), store_id)
    page, next_cursor = page_by_id(products, limit)
    return Page[ProductOut](
        items=[ProductOut.model_validate(p) for p in page], next_cursor=next_cursor
    )


@router.get(
    "/products/{product_id}",
    response_model=ProductOut,
    responses=problems(*ADMIN, 404),
    tags=["products"],
)
async def get_product(product_id: uuid.UUID, admin: AdminUser, session: Session) -> ProductOut:
    """One product."""
    return ProductOut.model_validate(await catalog.get_product(session, product_id))


@router.patch(
    "/products/{product_id}",
    response_model=ProductOut,
    responses=problems(*ADMIN, 404, 409),
    tags=["products"],
)
async def patch_product(
    product_id: uuid.UUID, body: ProductPatch, admin: AdminUser, session: Session, audit: Audit
) -> ProductOut:
    """Change any field of a product; absent fields are unchanged."""
    before = ProductOut.model_validate(await catalog.get_product(session, product_id))
    after = ProductOut.model_validate(
        await catalog.update_product(session, product_id, body.changes())
    )
    await audit.changed(session, "product.update", "product", product_id, before, after)
    return after


@router.delete(
    "/products/{product_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(*ADMIN, 404, 409),
    tags=["products"],
)
async def delete_product(
    product_id: uuid.UUID, admin: AdminUser, session: Session, audit: Audit
) -> None:
    """Delete a product that is on no promo (else 409 `conflict`)."""
    before = ProductOut.model_validate(await catalog.get_product(session, product_id))
    await catalog.delete_product(session, product_id)
    await audit.record(session, "product.delete", "product", product_id, before=before)
