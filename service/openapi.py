"""The OpenAPI schema, completed with what only the served bundle knows.

FastAPI builds the schema from the route signatures, which cannot say that ``label_ids`` are the
integers 0..K-1 of this bundle (the route takes strings, so that ``label_ids=0,2`` works too):
schema-driven clients and fuzzers would send labels the server refuses (schemathesis ST202).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from maskserve.bundle import Manifest
from maskserve.service.errors import ERROR_TABLE


def error_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses from the error table: one entry per status, naming every error type
    that answers with it, with ``model`` as the body (the v1 shape, or a protocol's own)."""
    types: dict[int, list[str]] = {}
    for status, error_type, _ in ERROR_TABLE.values():
        types.setdefault(status, []).append(error_type)
    return {
        status: {"model": model, "description": "error.type: " + ", ".join(f"`{t}`" for t in names)}
        for status, names in sorted(types.items())
    }


def install(app: FastAPI, manifest: Manifest, segment_path: str, model_name: str, model_version: str) -> None:
    """Make ``app.openapi()`` return the schema with the bundle's label ids and tasks, and the
    served model's name and version in the Open Inference Protocol's path parameters."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI caches it: patching is idempotent
        for path, item in schema["paths"].items():
            for operation in item.values() if path.startswith("/v2/models/") else ():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path" and parameter["name"] in ("name", "version"):
                        value = model_name if parameter["name"] == "name" else model_version
                        parameter["schema"] = {"type": "string", "enum": [value]}
        operation = schema["paths"][segment_path]["post"]
        for parameter in operation["parameters"]:
            if parameter["name"] == "label_ids":
                parameter["schema"] = {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": manifest.num_labels - 1},
                    "description": parameter["schema"].get("description", ""),
                }
                parameter["style"], parameter["explode"] = "form", True
            elif parameter["name"] == "task":
                parameter["schema"] = {"enum": list(manifest.tasks), "type": "string"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
