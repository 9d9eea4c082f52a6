"""Open Inference Protocol inference requests and responses, as bytes on the wire.

Three request forms (https://github.com/kserve/open-inference-protocol, ``inference_rest.md``, and
Triton's ``docs/protocol/extension_binary_data.md``):

* JSON: ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``, the ``IMAGE`` elements as
  base64 strings (input parameter ``content_type`` absent or ``"base64"``, the KServe/MLServer
  convention for bytes in JSON);
* the binary tensor extension: that JSON, ``Inference-Header-Content-Length`` bytes long, then each
  input with ``parameters.binary_data_size`` in input order; a BYTES tensor is its elements, each a
  4-byte little-endian length and the bytes;
* raw binary: ``Inference-Header-Content-Length: 0``, and the whole body is the one image.

The body is parsed whatever its Content-Type: tritonclient sends none.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.service.errors import EmptyBody, InvalidRequest
from maskserve.service.json_body import json_object

HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE = "IMAGE"
SEGMENTS = "SEGMENTS"  # BYTES [N]: each the /v1/segment JSON document of one image
LABEL_MAP = "LABEL_MAP"  # INT32 [N, H, W]: label id per pixel, -1 where no segment
OUTPUT_TYPES = {SEGMENTS: "BYTES", LABEL_MAP: "INT32"}
# Request parameters that reach Segmenter.params; binary_data_output is the protocol's own.
SEGMENT_PARAMETERS = ("task", "threshold", "mask_threshold", "overlap_threshold", "label_ids", "min_area")
_BINARY_DATA_OUTPUT = "binary_data_output"

Parameter = str | int | float | bool


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    parameters: dict[str, Parameter] = field(default_factory=dict)  # only SEGMENT_PARAMETERS
    outputs: tuple[RequestedOutput, ...] = (RequestedOutput(SEGMENTS, binary=False),)


@dataclass(frozen=True)
class Tensor:
    """One output: BYTES elements as a list of bytes, anything else as an array of its shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: list[bytes] | npt.NDArray[Any]


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an inference request; ``InvalidRequest`` (422) names what is wrong, ``EmptyBody`` (400) for none."""
    if not body:
        raise EmptyBody("the request has no body")
    if header_length is None:
        return _parse_json(body, b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if length == 0:
        return InferRequest(id=None, images=[body])
    if not 0 < length <= len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return _parse_json(body[:length], body[length:])


def _parse_json(header: bytes, tail: bytes) -> InferRequest:
    message = json_object(header, "the inference request")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"id must be a string, got {request_id!r}")
    parameters = _object(message.get("parameters"), "parameters")
    binary_default = _flag(parameters.pop(_BINARY_DATA_OUTPUT, False), _BINARY_DATA_OUTPUT)
    unknown = sorted(set(parameters) - set(SEGMENT_PARAMETERS))
    if unknown:
        raise InvalidRequest(f"unknown parameters {unknown}; known: {', '.join(SEGMENT_PARAMETERS)}")
    for name, value in parameters.items():
        if not isinstance(value, str | int | float):  # bool is an int
            raise InvalidRequest(f"parameter {name} must be a string, number or boolean, got {value!r}")
    images = _images(message.get("inputs"), tail)
    return InferRequest(request_id, images, parameters, _outputs(message.get("outputs"), binary_default))


def segment_arguments(parameters: dict[str, Parameter]) -> dict[str, Any]:
    """Request parameters as ``Segmenter.params`` arguments. Numbers may come as JSON numbers or as
    strings; ``label_ids`` as one id or a comma-separated string (parameters hold no lists)."""
    arguments: dict[str, Any] = {}
    for name, value in parameters.items():
        if name == "task":
            if not isinstance(value, str):
                raise InvalidRequest(f"parameter task must be a string, got {value!r}")
            arguments[name] = value
        elif name == "label_ids":
            parts = str(value).split(",") if not isinstance(value, bool) else [""]
            arguments[name] = [_number(part, name, int) for part in parts if part.strip()]
        elif name == "min_area":
            arguments[name] = _number(value, name, int)
        else:
            arguments[name] = _number(value, name, float)
    return arguments


def _number(value: Parameter, name: str, kind: type[int] | type[float]) -> Any:
    problem = f"parameter {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise InvalidRequest(problem)
    try:
        return kind(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise InvalidRequest(problem) from None


def _images(inputs: object, tail: bytes) -> list[bytes]:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest(f"inputs must be a non-empty list with the input {IMAGE}")
    names = [item.get("name") if isinstance(item, dict) else None for item in inputs]
    if names != [IMAGE]:
        raise InvalidRequest(f"the model has one input, {IMAGE} (BYTES, shape [N]); got inputs {names}")
    (tensor,) = inputs
    if tensor.get("datatype") != "BYTES":
        raise InvalidRequest(f"input {IMAGE} must have datatype BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and shape[0] > 0
        and shape[1:] in ([], [1])
    ):
        raise InvalidRequest(f"input {IMAGE} must have shape [N] or [N, 1] with N >= 1, got {shape!r}")
    count = shape[0]
    parameters = _object(tensor.get("parameters"), f"input {IMAGE} parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidRequest(f"input {IMAGE} has both data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"binary_data_size must be a non-negative integer, got {size!r}")
        if size != len(tail):
            raise InvalidRequest(f"input {IMAGE} declares {size} bytes of binary data; the body has {len(tail)}")
        images = split_bytes(tail)
    else:
        if tail:
            raise InvalidRequest(f"the body has {len(tail)} bytes after the JSON that no input declares")
        content_type = parameters.get("content_type", "base64")
        if content_type != "base64":
            raise InvalidRequest(f"{IMAGE} in JSON must be base64 strings (content_type base64), not {content_type!r}")
        images = [_base64(item, index) for index, item in enumerate(_elements(tensor.get("data"), shape))]
    if len(images) != count:
        raise InvalidRequest(f"input {IMAGE} has shape {shape} but holds {len(images)} elements")
    for index, image in enumerate(images):
        if not image:
            raise EmptyBody(f"image {index} of {IMAGE} is empty")
    return images


def _outputs(outputs: object, binary_default: bool) -> tuple[RequestedOutput, ...]:
    if outputs is None:
        return (RequestedOutput(SEGMENTS, binary_default),)
    if not isinstance(outputs, list) or not outputs:
        raise InvalidRequest("outputs must be a non-empty list when given")
    requested: list[RequestedOutput] = []
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_TYPES:
            raise InvalidRequest(f"unknown output {name!r}; outputs: {', '.join(OUTPUT_TYPES)}")
        if any(output.name == name for output in requested):
            raise InvalidRequest(f"output {name} is requested twice")
        parameters = _object(item.get("parameters"), f"output {name} parameters")
        if parameters.get("classification"):
            raise InvalidRequest(f"output {name} has no classification form")
        binary = _flag(parameters.get("binary_data", binary_default), f"output {name} binary_data")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)


def _object(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {value!r}")
    return dict(value)


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false, got {value!r}")
    return value


def _elements(data: object, shape: list[int]) -> list[object]:
    """The elements of data of ``shape`` [N] or [N, 1]: a flat list (the protocol's row-major form),
    or for [N, 1] also N one-element lists. Nothing deeper: the shape allows no more, and a parse
    that followed any nesting would accept data that matches no shape."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input {IMAGE} needs data (a list of base64 strings) or binary_data_size")
    if len(shape) == 2 and data and all(isinstance(row, list) for row in data):
        if any(len(row) != 1 for row in data):
            raise InvalidRequest(f"input {IMAGE} of shape {shape} must hold N strings or N one-element lists")
        return [row[0] for row in data]
    return list(data)


def _base64(item: object, index: int) -> bytes:
    if not isinstance(item, str):
        raise InvalidRequest(f"element {index} of {IMAGE} must be a base64 string, got {type(item).__name__}")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"element {index} of {IMAGE} is not base64: {exc}") from None


def split_bytes(data: bytes) -> list[bytes]:
    """A serialized BYTES tensor to its elements: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidRequest(f"BYTES tensor data ends inside an element length at byte {offset}")
        (length,) = struct.unpack_from("<I", data, offset)
        start = offset + 4
        if start + length > len(data):
            raise InvalidRequest(f"BYTES element at byte {offset} declares {length} bytes; {len(data) - start} remain")
        elements.append(data[start : start + length])
        offset = start + length
    return elements


def join_bytes(elements: Sequence[bytes]) -> bytes:
    """The inverse of ``split_bytes``."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[RequestedOutput, Tensor]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: plain JSON, or with any binary output the JSON followed
    by the binary outputs in order, with ``Inference-Header-Content-Length``."""
    described: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for requested, tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if requested.binary:
            raw = join_bytes(tensor.value) if isinstance(tensor.value, list) else _little_endian(tensor.value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif isinstance(tensor.value, list):
            entry["data"] = [element.decode("utf-8") for element in tensor.value]
        else:
            entry["data"] = tensor.value.ravel().tolist()
        described.append(entry)
    message: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        message["id"] = request_id
    message["outputs"] = described
    header = json.dumps(message, separators=(",", ":")).encode()
    if not tail:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(tail), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def _little_endian(array: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
