"""One pass over the generated OpenAPI that completes what FastAPI's declarations cannot
say, from one table of operations (`Operation`) and the routes' own dependencies, so that
a client generated from `/openapi.json` types every answer:

- each operation gets its stable camelCase `operationId` from the table (a route missing
  from the table stops the document from being generated);
- every error status it can answer, with `Problem` under `application/problem+json` only
  and its slugs as named examples (and `x-problem-slugs`): the statuses every route shares
  (400, 422, 500, 503; 401 and 403 where a token is needed; 409 `busy` on writes; 413 where
  there is a body) plus the table's domain slugs;
- headers: the `Idempotency-Key` request header where a route honours it (found from its
  dependencies), `X-Request-ID` on every answer, `Location` on 201, `Retry-After` on 409,
  429 and 503, `Idempotent-Replayed` on replayable successes, `WWW-Authenticate` on 401;
- optional JSON bodies as a plain `$ref` with `required: false` (an `anyOf` with `null`
  breaks generated clients), `format` and upper bounds on integers and format strings,
  top-level tags and links named by `operationId`.

It knows no domain: the table, the links and the dependencies that take an
`Idempotency-Key` come from the composition (app/api/contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant

from app.core.problems import PROBLEM_MEDIA_TYPE

Schema = dict[str, Any]
_METHODS = ("get", "put", "post", "patch", "delete")
_REF = "#/components/schemas/Problem"


@dataclass(frozen=True)
class Operation:
    """An operation's stable id and the domain slugs it can answer, by status."""

    id: str
    slugs: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: the answer of `source` (method, path, status) feeds `target`."""

    name: str
    source: tuple[str, str, str]
    target: str  # operationId
    parameters: dict[str, str]
    body: dict[str, str] | None = None


@dataclass(frozen=True)
class Contract:
    prefix: str  # the API's path prefix; table paths are relative to it, else absolute
    operations: Mapping[str, Operation]  # "METHOD /path"
    tags: tuple[tuple[str, str], ...]  # name, description
    links: tuple[Link, ...] = ()
    idempotency_dependencies: frozenset[Callable[..., Any]] = frozenset()


# Statuses and slugs every route shares; the table adds the domain's.
_SHARED = {
    400: ("bad-request",),
    401: ("unauthenticated",),
    403: ("forbidden",),
    404: ("not-found",),
    409: ("busy",),
    413: ("payload-too-large",),
    415: ("unsupported-media-type",),
    422: ("validation-error",),
    429: ("rate-limited",),
    500: ("internal-error",),
    503: ("unavailable",),
}
_HEADERS: dict[str, Schema] = {
    "X-Request-ID": {
        "description": "The request's id (the client's `X-Request-ID` if it sent one); "
        "logs carry it.",
        "schema": {"type": "string", "maxLength": 128},
    },
    "Location": {
        "description": "The created resource (or, for uploads, where its codes are listed).",
        "schema": {"type": "string", "maxLength": 2048},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying (409 `busy` and "
        "`idempotency-key-in-use`, 429, 503).",
        "schema": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 86400},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same `Idempotency-Key`; the request did nothing again.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "WWW-Authenticate": {
        "description": "`Bearer`.",
        "schema": {"type": "string", "maxLength": 256},
    },
}
_IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key and body replay the first answer "
    "(`Idempotent-Replayed: true`); another body is 422 `idempotency-key-reused`; a "
    "retry while the first still runs is 409 `idempotency-key-in-use`. Kept per user "
    "and path for `IDEMPOTENCY_TTL_HOURS`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"},
}
_FORMAT_LENGTHS = {"uuid": 36, "date": 10, "date-time": 64, "email": 320, "password": 256}
_INT32 = 2**31 - 1


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def idempotent_operations(app: FastAPI, calls: frozenset[Callable[..., Any]]) -> set[str]:
    """ "METHOD /path" of every write whose dependencies take an `Idempotency-Key`."""
    found: set[str] = set()
    for candidate in app.router.routes:
        contexts = getattr(candidate, "effective_route_contexts", None)
        for context in contexts() if contexts is not None else ():
            dependant = getattr(context, "dependant", None)
            if dependant is None or not calls & set(_dependency_calls(dependant)):
                continue
            found |= {f"{m} {context.path_format}" for m in context.methods if m != "GET"}
    return found


def _title(slug: str) -> str:
    return slug.replace("-", " ").capitalize()


def _problem_response(status: int, slugs: Iterable[str], description: str) -> Schema:
    ordered = list(dict.fromkeys(slugs))
    response: Schema = {
        "description": f"{description.rstrip('.')}: "
        + ", ".join(f"`{slug}`" for slug in ordered)
        + ".",
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": {"$ref": _REF},
                "examples": {
                    slug: {
                        "summary": _title(slug),
                        "value": {
                            "type": f"/problems/{slug}",
                            "title": _title(slug),
                            "status": status,
                            "detail": f"A sentence for people: {_title(slug).lower()}.",
                        },
                    }
                    for slug in ordered
                },
            }
        },
        "x-problem-slugs": ordered,
    }
    return response


def _header_ref(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


class _Completer:
    def __init__(self, app: FastAPI, contract: Contract, schema: Schema) -> None:
        self.contract = contract
        self.schema = schema
        self.idempotent = idempotent_operations(app, contract.idempotency_dependencies)
        self.ids: dict[str, str] = {}  # operationId -> "METHOD /path"
        self.seen: set[str] = set()  # table keys

    def operation_of(self, method: str, path: str) -> Operation:
        prefix = self.contract.prefix
        relative = path[len(prefix) :] if path.startswith(prefix + "/") else path
        key = f"{method.upper()} {relative}"
        operation = self.contract.operations.get(key)
        if operation is None:
            raise KeyError(f"{key} is not in the OpenAPI contract table")
        self.seen.add(key)
        return operation

    def run(self) -> None:
        for path, item in self.schema["paths"].items():
            for method in _METHODS:
                if method in item:
                    self.complete(method, path, item[method])
        unused = set(self.contract.operations) - self.seen
        if unused:
            raise KeyError(f"the OpenAPI contract table names unknown operations: {unused}")
        self.add_links()
        self.schema["tags"] = [{"name": n, "description": d} for n, d in self.contract.tags]
        components = self.schema.setdefault("components", {})
        components["headers"] = _HEADERS
        for definition in components.get("schemas", {}).values():
            _bound(definition)

    def complete(self, method: str, path: str, op: Schema) -> None:
        operation = self.operation_of(method, path)
        if operation.id in self.ids:
            raise KeyError(f"operationId {operation.id} is used twice")
        self.ids[operation.id] = f"{method.upper()} {path}"
        op["operationId"] = operation.id
        unknown = set(op.get("tags", ())) - {name for name, _ in self.contract.tags}
        if unknown:
            raise KeyError(f"{method.upper()} {path}: tags {unknown} are not declared")
        api = path.startswith(self.contract.prefix + "/")
        write = method != "get"
        idempotent = f"{method.upper()} {path}" in self.idempotent
        body = op.get("requestBody")
        if body is not None:
            _plain_optional_body(body)
        for parameter in op.get("parameters", ()):
            _plain_optional_parameter(parameter)
            _bound(parameter.get("schema", {}))
        if idempotent:
            op.setdefault("parameters", []).append(dict(_IDEMPOTENCY_KEY))

        slugs = self.error_slugs(operation, op, api=api, write=write, idempotent=idempotent)
        responses: Schema = op["responses"]
        for status, names in sorted(slugs.items()):
            declared = responses.get(str(status), {})
            description = declared.get("description") or HTTPStatus(status).phrase
            if description.startswith(("Successful", "Problem")) or "`" in description:
                description = HTTPStatus(status).phrase
            response = _problem_response(status, names, description)
            headers: Schema = {"X-Request-ID": _header_ref("X-Request-ID")}
            if status in (409, 429, 503):
                headers["Retry-After"] = _header_ref("Retry-After")
            if status == 401:
                headers["WWW-Authenticate"] = _header_ref("WWW-Authenticate")
            response["headers"] = headers
            responses[str(status)] = response
        for code, success in responses.items():
            if not code.startswith("2"):
                continue
            headers = success.setdefault("headers", {})
            headers["X-Request-ID"] = _header_ref("X-Request-ID")
            if code == "201":
                headers["Location"] = _header_ref("Location")
            if idempotent:
                headers["Idempotent-Replayed"] = _header_ref("Idempotent-Replayed")
        op["responses"] = dict(sorted(responses.items()))

    @staticmethod
    def error_slugs(
        operation: Operation, op: Schema, *, api: bool, write: bool, idempotent: bool
    ) -> dict[int, list[str]]:
        """Every error status the operation can answer, with its slugs: those it declares,
        the ones every route of its kind shares, then the table's."""
        slugs: dict[int, list[str]] = {}
        for status in op["responses"]:
            if status.isdigit() and int(status) >= 400:
                slugs.setdefault(int(status), [])
        shared = [500]
        if api:
            shared += [400, 422, 503]
        if op.get("security"):
            shared.append(401)
            if write:
                shared.append(403)  # CSRF of the console's cookie sessions, or the role
        if api and write:
            shared.append(409)
        if "requestBody" in op:
            shared.append(413)
        for status in shared:
            slugs.setdefault(status, [])
        for status in slugs:
            slugs[status] += _SHARED.get(status, ())
        if idempotent:
            slugs[409].append("idempotency-key-in-use")
            slugs[422].append("idempotency-key-reused")
        for status, extra in operation.slugs.items():
            slugs.setdefault(status, []).extend(extra)
        return slugs

    def add_links(self) -> None:
        for link in self.contract.links:
            method, path, status = link.source
            if link.target not in self.ids:
                raise KeyError(f"link {link.name} targets unknown operation {link.target}")
            full = path if path in self.schema["paths"] else self.contract.prefix + path
            response = self.schema["paths"][full][method]["responses"][status]
            definition: Schema = {"operationId": link.target, "parameters": link.parameters}
            if link.body is not None:
                definition["requestBody"] = link.body
            response.setdefault("links", {})[link.name] = definition


def _plain_optional_body(body: Schema) -> None:
    """`anyOf: [$ref, null]` (FastAPI's optional body) becomes the `$ref`, not required."""
    for media in body.get("content", {}).values():
        schema = media.get("schema", {})
        branches = schema.get("anyOf", [])
        refs = [b for b in branches if "$ref" in b]
        if len(branches) == 2 and len(refs) == 1 and {"type": "null"} in branches:
            media["schema"] = refs[0]
            body["required"] = False


def _plain_optional_parameter(parameter: Schema) -> None:
    """An optional parameter is left out, never sent as null: `anyOf: [X, null]` becomes X
    (with the keywords FastAPI put beside the `anyOf`)."""
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf", [])
    rest = [b for b in branches if b != {"type": "null"}]
    if parameter.get("required") or len(rest) != 1 or len(branches) != 2:
        return
    outer = {k: v for k, v in schema.items() if k != "anyOf"}
    parameter["schema"] = {**rest[0], **outer}


def _bound(schema: Any) -> None:
    """Integers get a `format`; strings of a known format get their length bound."""
    if isinstance(schema, list):
        for item in schema:
            _bound(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "integer" and "format" not in schema:
        small = schema.get("minimum", 0) >= -_INT32 - 1 and schema.get("maximum", 2**63) <= _INT32
        schema["format"] = "int32" if small else "int64"
    if schema.get("type") == "string" and "maxLength" not in schema:
        length = _FORMAT_LENGTHS.get(schema.get("format", ""))
        if length is not None:
            schema["maxLength"] = length
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for sub in value.values():
                _bound(sub)
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not"):
            _bound(value)


def install_contract(app: FastAPI, contract: Contract) -> None:
    """Complete the app's OpenAPI document from `contract` when it is first generated."""
    generate = app.openapi

    def openapi() -> Schema:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh:
            try:
                _Completer(app, contract, schema).run()
            except Exception:
                app.openapi_schema = None  # never serve a half-completed document
                raise
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
