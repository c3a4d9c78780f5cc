"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.http.app import ROUTES, Route
from gateway.models import Problem

SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "province": [{"tongbanSignature": []}],
    "partner": [{"tongbanSignature": []}],
    "reader": [{"tongbanSignature": []}, {"operatorToken": []}],
    "viewer": [{"operatorToken": []}],
    "operator": [{"operatorToken": []}],
    "admin": [{"operatorToken": []}],
    "none": [],
}


def build(version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for r in ROUTES:
        if r.body:
            models.add(r.body)
        models.update(m for _, m in r.responses if m)
    mode: Literal["validation"] = "validation"
    keyed = [(m, mode) for m in sorted(models, key=lambda m: m.__name__)]
    _, schema = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tongban cross-province gateway",
            "version": version,
            "description": "跨省通办 interoperability gateway. Province-facing calls are signed "
            "with X-Tongban-Key, X-Tongban-Timestamp, X-Tongban-Nonce and X-Tongban-Signature "
            "(HMAC-SHA256 or HMAC-SM3 over method, path and query, timestamp, nonce and the body "
            "digest); errors are RFC 9457 problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "tongbanSignature": {"type": "apiKey", "in": "header", "name": "X-Tongban-Key"},
                "operatorToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(r: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": r.name, "summary": r.summary, "security": SECURITY[r.auth]}
    params = [
        {"name": p[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for p in r.path.split("/")
        if p.startswith("{")
    ]
    params += [{"name": n, "in": "query", "schema": {"type": t}} for n, t in r.query]
    if params:
        op["parameters"] = params
    if r.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(r.body)}},
        }
    responses: dict[str, Any] = {}
    for status, model in r.responses or ((200, None),):
        content = {"application/json": {"schema": _ref(model)}} if model else {}
        responses[str(status)] = {"description": "OK", **({"content": content} if content else {})}
    problem = {"application/problem+json": {"schema": _ref(Problem)}}
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503):
        responses[str(status)] = {"description": "problem", "content": problem}
    op["responses"] = responses
    return op
