"""Open Inference Protocol messages: every request form parses to the same images, bad requests are
refused with what is wrong, and responses read back through tritonclient's own ``InferResult``."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton

from maskserve.service.errors import EmptyBody, InvalidRequest
from maskserve.service.inference_protocol.messages import (
    IMAGE,
    LABEL_MAP,
    SEGMENTS,
    RequestedOutput,
    Tensor,
    encode_response,
    join_bytes,
    parse_request,
    segment_arguments,
    split_bytes,
)

IMAGES = [b"\x89PNG first", b"\xff\xd8 second, longer", b"x"]


def _json_request(images: list[bytes], **extra: object) -> bytes:
    tensor = {
        "name": IMAGE,
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [base64.b64encode(i).decode() for i in images],
    }
    return json.dumps({"inputs": [tensor], **extra}).encode()


def _binary_request(images: list[bytes], **extra: object) -> tuple[bytes, str]:
    tail = join_bytes(images)
    tensor = {"name": IMAGE, "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(tail)}}
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + tail, str(len(header))


def test_bytes_elements_round_trip() -> None:
    assert join_bytes(IMAGES) == b"".join(struct.pack("<I", len(i)) + i for i in IMAGES)
    assert split_bytes(join_bytes(IMAGES)) == IMAGES
    assert split_bytes(join_bytes([b"", b"a"])) == [b"", b"a"]
    with pytest.raises(InvalidRequest, match="ends inside an element length"):
        split_bytes(join_bytes([b"abc"]) + b"\x01\x00")
    with pytest.raises(InvalidRequest, match="declares 9 bytes; 3 remain"):
        split_bytes(struct.pack("<I", 9) + b"abc")


def test_the_three_forms_give_the_same_images() -> None:
    body, length = _binary_request(IMAGES, id="b1")
    binary = parse_request(body, length)
    assert binary.images == IMAGES and binary.id == "b1"
    assert parse_request(_json_request(IMAGES), None).images == IMAGES
    # A header that covers the whole JSON, with no binary input, is the JSON form too.
    as_json = _json_request(IMAGES)
    assert parse_request(as_json, str(len(as_json))).images == IMAGES
    # Raw binary: the whole body is the one image, with the defaults.
    raw = parse_request(IMAGES[0], "0")
    assert raw.images == [IMAGES[0]] and raw.parameters == {} and raw.id is None
    assert raw.outputs == (RequestedOutput(SEGMENTS, binary=False),)
    # [N, 1] and nested data are the same tensor.
    nested = json.loads(_json_request(IMAGES))
    nested["inputs"][0]["shape"] = [3, 1]
    nested["inputs"][0]["data"] = [[item] for item in nested["inputs"][0]["data"]]
    assert parse_request(json.dumps(nested).encode(), None).images == IMAGES


def test_outputs_follow_binary_data_and_binary_data_output() -> None:
    def outputs(**extra: object) -> tuple[RequestedOutput, ...]:
        return parse_request(_json_request(IMAGES[:1], **extra), None).outputs

    assert outputs() == (RequestedOutput(SEGMENTS, False),)
    assert outputs(parameters={"binary_data_output": True}) == (RequestedOutput(SEGMENTS, True),)
    both = [{"name": LABEL_MAP, "parameters": {"binary_data": True}}, {"name": SEGMENTS}]
    assert outputs(outputs=both) == (RequestedOutput(LABEL_MAP, True), RequestedOutput(SEGMENTS, False))
    override = [{"name": SEGMENTS, "parameters": {"binary_data": False}}, {"name": LABEL_MAP}]
    assert outputs(outputs=override, parameters={"binary_data_output": True}) == (
        RequestedOutput(SEGMENTS, False),
        RequestedOutput(LABEL_MAP, True),
    )


def test_parameters_become_segmenter_arguments() -> None:
    parameters = {"task": "semantic", "threshold": 0.25, "mask_threshold": "0.4", "label_ids": "0, 2", "min_area": 5}
    request = parse_request(_json_request(IMAGES[:1], parameters=parameters), None)
    assert segment_arguments(request.parameters) == {
        "task": "semantic",
        "threshold": 0.25,
        "mask_threshold": 0.4,
        "label_ids": [0, 2],
        "min_area": 5,
    }
    assert segment_arguments({"label_ids": 3, "overlap_threshold": 1}) == {"label_ids": [3], "overlap_threshold": 1.0}
    for bad, needle in [
        ({"threshold": True}, "threshold must be a number"),
        ({"min_area": 2.5}, "min_area must be an integer"),
        ({"label_ids": "0,x"}, "label_ids must be an integer"),
        ({"task": 3}, "task must be a string"),
    ]:
        with pytest.raises(InvalidRequest, match=needle):
            segment_arguments(bad)  # type: ignore[arg-type]


_IMG = base64.b64encode(b"img").decode()


def _tensor(**changes: object) -> bytes:
    tensor = {"name": IMAGE, "datatype": "BYTES", "shape": [1], "data": [_IMG]}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


BAD: list[tuple[str, bytes, str | None, str]] = [
    ("header not a number", b"{}", "ten", "must be an integer"),
    ("header past the body", b"{}", "99", "the body has 2 bytes"),
    ("not JSON", b"\x89PNG...", None, "not JSON"),
    ("not an object", b"[]", None, "must be a JSON object"),
    # json.loads raises plain ValueError past Python's integer digit limit, RecursionError when deep.
    ("integer past the digit limit", b'{"id": ' + b"1" * 5000 + b"}", None, "not JSON: Exceeds the limit"),
    ("nested too deeply", b"[" * 100_000, None, "nested too deeply"),
    ("not UTF-8", b'{"id": "\xff"}', None, "not JSON"),
    ("no inputs", b'{"inputs": []}', None, "non-empty list"),
    ("wrong input name", _tensor(name="image"), None, "got inputs \\['image'\\]"),
    ("two inputs", b'{"inputs": [{"name": "IMAGE"}, {"name": "MASK"}]}', None, "got inputs"),
    ("wrong datatype", _tensor(datatype="UINT8"), None, "datatype BYTES"),
    ("2-D shape", _tensor(shape=[1, 2]), None, "shape \\[N\\] or \\[N, 1\\]"),
    ("zero images", _tensor(shape=[0], data=[]), None, "N >= 1"),
    ("count mismatch", _tensor(shape=[2]), None, "holds 1 elements"),
    ("not base64", _tensor(data=["not base64!"]), None, "not base64"),
    ("not a string", _tensor(data=[17]), None, "must be a base64 string"),
    ("str content type", _tensor(parameters={"content_type": "str"}), None, "content_type base64"),
    ("no data", _tensor(data=None), None, "needs data"),
    ("empty image", _tensor(data=[""]), None, "is empty"),
    # Data of shape [N] is N strings, of [N, 1] those or N one-element lists: nothing deeper.
    ("nested data for shape [N]", _tensor(data=[[_IMG]]), None, "element 0 of IMAGE must be a base64 string, got list"),
    ("data nested past [N, 1]", _tensor(shape=[1, 1], data=[[[_IMG]]]), None, "must be a base64 string, got list"),
    ("deep data", _tensor(data=json.loads("[" * 500 + '"aW1n"' + "]" * 500)), None, "must be a base64 string"),
    ("rows of two for [N, 1]", _tensor(shape=[2, 1], data=[[_IMG, _IMG]]), None, "one-element lists"),
    (
        "unknown output",
        json.dumps({"inputs": json.loads(_tensor())["inputs"], "outputs": [{"name": "MASKS"}]}).encode(),
        None,
        "unknown output 'MASKS'",
    ),
    (
        "unknown parameter",
        json.dumps({"inputs": json.loads(_tensor())["inputs"], "parameters": {"treshold": 0.5}}).encode(),
        None,
        "unknown parameters \\['treshold'\\]",
    ),
    (
        "id not a string",
        json.dumps({"id": 7, "inputs": json.loads(_tensor())["inputs"]}).encode(),
        None,
        "id must be a string",
    ),
]


@pytest.mark.parametrize(("case", "body", "header", "needle"), BAD, ids=[case for case, *_ in BAD])
def test_bad_requests_say_what_is_wrong(case: str, body: bytes, header: str | None, needle: str) -> None:
    with pytest.raises((InvalidRequest, EmptyBody), match=needle):
        parse_request(body, header)


def test_binary_sizes_must_add_up() -> None:
    body, length = _binary_request(IMAGES)
    with pytest.raises(InvalidRequest, match=r"declares \d+ bytes of binary data; the body has"):
        parse_request(body + b"extra", length)
    with pytest.raises(InvalidRequest, match="no input declares"):
        parse_request(_json_request(IMAGES) + b"tail", str(len(_json_request(IMAGES))))
    with pytest.raises(EmptyBody):
        parse_request(b"", "0")


@pytest.mark.parametrize("binary", [False, True])
def test_responses_read_back_with_tritonclient(binary: bool) -> None:
    segments = [json.dumps({"segments": [], "n": i}).encode() for i in range(2)]
    label_map = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 5
    body, headers = encode_response(
        "shapes",
        "1",
        "req-9",
        [
            (RequestedOutput(SEGMENTS, binary), Tensor(SEGMENTS, "BYTES", (2,), segments)),
            (RequestedOutput(LABEL_MAP, binary), Tensor(LABEL_MAP, "INT32", label_map.shape, label_map)),
        ],
    )
    length = headers.get("Inference-Header-Content-Length")
    assert (length is not None) is binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    result = triton.InferResult.from_response_body(body, header_length=int(length) if length else None)
    assert result.get_response()["id"] == "req-9" and result.get_response()["model_name"] == "shapes"
    decoded = [item if isinstance(item, bytes) else item.encode() for item in result.as_numpy(SEGMENTS)]
    assert decoded == segments
    assert np.array_equal(result.as_numpy(LABEL_MAP), label_map)
