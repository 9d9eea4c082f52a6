"""Our RLE against pycocotools.mask.encode, byte for byte, and round trips through decode."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from maskserve.service.rle import decode_mask, encode_label_map, encode_mask


def _reference(mask: np.ndarray) -> dict:
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def _check(mask: np.ndarray) -> None:
    ours = encode_mask(mask)
    ref = _reference(mask)
    assert ours.rle["size"] == [mask.shape[0], mask.shape[1]]
    assert ours.rle["counts"] == ref["counts"].decode("ascii")
    assert ours.area == int(coco_mask.area(ref)) == int(mask.sum())
    assert ours.bbox == tuple(int(v) for v in coco_mask.toBbox(ref))
    decoded = coco_mask.decode({"size": ours.rle["size"], "counts": ours.rle["counts"].encode()})
    assert np.array_equal(decoded, mask.astype(np.uint8))


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((4, 6), bool),  # all zeros
        np.ones((4, 6), bool),  # all ones
        np.ones((1, 1), bool),  # 1x1 on
        np.zeros((1, 1), bool),  # 1x1 off
        np.eye(5, 9, dtype=bool),  # non-square, diagonal
        np.tri(7, 3, dtype=bool),  # non-square, tall
        np.pad(np.ones((2, 2), bool), ((0, 3), (4, 0))),  # ends on a run of ones (top-right)
    ],
    ids=["zeros", "ones", "1x1-on", "1x1-off", "eye-5x9", "tri-7x3", "ends-with-ones"],
)
def test_edge_cases(mask: np.ndarray) -> None:
    _check(mask)


def test_random_masks_and_large_counts() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 50, size=2)
        _check(rng.random((h, w)) < rng.random())
    big = np.zeros((1000, 1200), bool)  # runs long enough to need multi-byte counts
    big[100:900, 50:1100] = True
    _check(big)


def test_label_map_encodes_every_id_in_one_pass() -> None:
    rng = np.random.default_rng(1)
    label_map = rng.integers(-1, 5, size=(33, 47)).astype(np.int32)
    ids = [4, 0, 2, 7]  # any order; 7 is absent
    encoded = encode_label_map(label_map.T.ravel(), label_map.shape[0], ids)
    for label, enc in zip(ids, encoded, strict=True):
        assert enc.rle["counts"] == _reference(label_map == label)["counts"].decode()
    assert encoded[3].area == 0 and encoded[3].bbox == (0, 0, 0, 0)


def test_decode_matches_pycocotools() -> None:
    rng = np.random.default_rng(5)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    cases += [rng.random((int(rng.integers(1, 90)), int(rng.integers(1, 90)))) < rng.random() for _ in range(200)]
    big = np.zeros((1000, 700), bool)
    big[100:900, 50:650] = True  # long runs: multi-digit counts, and negative deltas between them
    big[400:600, 300:400] = False
    cases.append(big)
    for mask in cases:
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        expected = coco_mask.decode(rle).astype(bool)
        assert np.array_equal(decode_mask(rle), expected)
        assert np.array_equal(decode_mask({"size": rle["size"], "counts": rle["counts"].decode()}), mask)


def test_decode_refuses_counts_that_do_not_cover_the_image() -> None:
    rle = encode_mask(np.ones((4, 4), bool)).rle
    with pytest.raises(ValueError, match="cover"):
        decode_mask({"size": [5, 4], "counts": rle["counts"]})
