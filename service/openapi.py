"""The OpenAPI schema, completed with what only the served bundle knows.

FastAPI builds the schema from the route signatures, which cannot say that ``label_ids`` are the
integers 0..K-1 of this bundle (the route takes strings, so that ``label_ids=0,2`` works too):
schema-driven clients and fuzzers would send labels the server refuses (schemathesis ST202).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from maskserve.bundle import Manifest


def install(app: FastAPI, manifest: Manifest, segment_path: str) -> None:
    """Make ``app.openapi()`` return the schema with the bundle's label ids and tasks."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI caches it: patching is idempotent
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
