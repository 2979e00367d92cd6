"""inference/jsonbody.py: JSON bodies bounded and type-checked before anything large exists."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import inference.jsonbody as jsonbody
from inference.jsonbody import JsonError, fast_pixels, parse_cost_bytes, parse_json

SHAPE = (4, 5, 3)


@pytest.fixture(params=["native", "pure"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each fast-path test runs twice: with infra/image/native's C reader (built by `make
    setup`; skipped only where no C compiler exists) and with the pure simdjson path."""
    if request.param == "pure":
        monkeypatch.setattr(jsonbody, "lepton_pixels", None)
    elif jsonbody.lepton_pixels is None:
        if shutil.which("cc") is not None:
            pytest.fail("lepton_pixels is not built: run `make setup`")
        pytest.skip("no C compiler: lepton_pixels cannot be built here")
    return str(request.param)


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE))


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b"{}," * 50_000 + b"{}]",
        b"[" + b"[]," * 50_000 + b"[]]",
        b"[" + b'"",' * 50_000 + b'""]',
        b"[" + b'"\\ud83d\\ude00",' * 20_000 + b'"x"]',
        b"[" + b"0.5," * 50_000 + b"1]",
        b"[" + b"123456," * 50_000 + b"1]",
        b"[" + b'{"a": [1, 2, {"b": "cc"}]},' * 10_000 + b"1]",
        json.dumps({"instances": _pixels(8).tolist()}).encode(),
    ],
)
def test_parse_cost_bounds_what_json_loads_allocates(body: bytes) -> None:
    tracemalloc.start()
    try:
        doc = json.loads(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert doc is not None
    assert peak <= parse_cost_bytes(body), (peak, parse_cost_bytes(body))


def test_over_budget_is_413_before_parsing() -> None:
    body = b"[" + b"{}," * 100_000 + b"{}]"
    with pytest.raises(JsonError) as info:
        parse_json(body, SHAPE, 32, max_parse_bytes=1_000_000)
    assert info.value.status == 413 and "MiB" in info.value.message


@pytest.mark.parametrize(
    ("doc", "status"),
    [
        ([[["x" * 1000, "y", "z"]] * 5] * 4, 400),  # strings: refused, no string array made
        ([[[1, 2, 3]] * 5] * 3 + [[[1, 2]] * 5], 400),  # ragged
        ([[[True, 1, 2]] * 5] * 4, 400),  # booleans are not pixels
        ([[[None, 1, 2]] * 5] * 4, 400),
        ([[[10**30, 1, 2]] * 5] * 4, 400),  # beyond int64
        ({"instances": [[[[1, 2, 3]] * 5] * 4] * 33}, 413),
        ([[[[1, 2, 3]] * 5] * 4] * 33, 413),
        ({"instances": [[[[[1, 2, 3]] * 5] * 4]]}, 400),  # an instance must be 3-D
        ({"instances": [{"b64": "abc", "x": 1}]}, 400),
        ({"instances": []}, 400),
        ({"b64": "!!"}, 400),
        ("x", 400),
    ],
)
def test_refused_bodies(doc: object, status: int) -> None:
    with pytest.raises(JsonError) as info:
        parse_json(json.dumps(doc).encode(), SHAPE, 32, 2**28)
    assert info.value.status == status


@pytest.mark.usefixtures("reader")
def test_fast_path_equals_general_path() -> None:
    for batch in (_pixels(3), _pixels(2) / 2, -_pixels(1) / 255):
        for doc in ({"instances": batch.tolist()}, batch.tolist(), batch[0].tolist()):
            body = json.dumps(doc).encode()
            fast = fast_pixels(body, SHAPE, 32)
            general = parse_json(body, SHAPE, 32, 2**28)
            assert fast is not None
            want = general.batch if general.batch is not None else np.stack(general.instances)
            np.testing.assert_array_equal(fast[0], want)
            assert fast[0].dtype == want.dtype
            assert fast[1] == general.single


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize(
    "body",
    [
        b"[[[007, 1, 2]"
        + b", [1, 2, 3]" * 4
        + b"]"
        + b", [[1, 2, 3]"
        + b", [1, 2, 3]" * 4
        + b"]" * 3
        + b"]",
        b'{"instances": [[["1", 2, 3]]]}',
        b'{"\\u0069nstances": []}',
    ],
)
def test_fast_path_leaves_anything_unusual_to_the_general_path(body: bytes) -> None:
    assert fast_pixels(body, SHAPE, 32) is None
    with pytest.raises(JsonError):
        parse_json(body, SHAPE, 32, 2**28)


@pytest.mark.usefixtures("reader")
def test_fast_path_reads_every_integer_of_up_to_three_digits_exactly() -> None:
    values = np.arange(1000).reshape(50, 4, 5)  # 0..999, as [N, H, W] pixels with C = 1
    body = json.dumps(values[..., None].tolist()).encode()
    fast = fast_pixels(body, (4, 5, 1), 50)
    assert fast is not None
    np.testing.assert_array_equal(fast[0][..., 0], values)


def _mutations(body: bytes) -> list[bytes]:
    """Invalid JSON one edit away from a valid pixel body, each keeping the bracket-and-comma
    skeleton the fast path compares (so only its number checks can refuse them)."""
    first = body.index(b"[[[") + 3  # the first pixel's first digit
    comma = body.index(b",", first)
    close = body.index(b"]", first)
    return [
        body[:comma] + b" 7" + body[comma:],  # "12 7,": two numbers in one slot
        body[: close + 1] + b"7" + body[close + 1 :],  # "]7": a number outside any slot
        body[: close + 1] + b" 7" + body[close + 1 :],  # "] 7"
        body[:first] + b"0" + body[first:],  # a leading zero
        body[:first] + body[comma:],  # an empty slot
        body + b"7",  # trailing garbage
    ]


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("scale", [1, 255])  # integer pixels, float pixels
def test_fast_path_refuses_what_json_refuses(scale: int) -> None:
    pixels = _pixels(1)[0] if scale == 1 else _pixels(1)[0] / scale
    for compact in (False, True):
        body = json.dumps(pixels.tolist(), separators=(",", ":") if compact else None).encode()
        assert fast_pixels(body, SHAPE, 32) is not None
        for bad in _mutations(body):
            with pytest.raises(ValueError):
                json.loads(bad)
            assert fast_pixels(bad, SHAPE, 32) is None, bad[:40]


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize(
    ("divisor", "alphabet", "seed"),
    [(1, b"0123456789, []\n", 7), (7, b"0123456789.eE+-, []", 11)],
    ids=["integers", "floats"],
)
def test_fast_path_never_reads_a_random_edit_differently_from_json(
    divisor: int, alphabet: bytes, seed: int
) -> None:
    """Random edits of a valid body (characters the fast path handles itself: those of
    integers, or of floats): whatever it accepts, json.loads accepts too, with the same
    numbers."""
    rng = np.random.default_rng(seed)
    pixels = _pixels(1)[0]
    body = json.dumps((pixels if divisor == 1 else pixels / divisor).tolist()).encode()
    chars = list(alphabet)
    accepted = 0
    for _ in range(3000):
        edited = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(edited)))
            kind = rng.integers(0, 3)
            if kind == 0:
                edited.insert(at, int(rng.choice(chars)))
            elif kind == 1:
                del edited[at]
            else:
                edited[at] = int(rng.choice(chars))
        fast = fast_pixels(bytes(edited), SHAPE, 32)
        if fast is None:
            continue
        accepted += 1
        np.testing.assert_array_equal(fast[0][0], np.asarray(json.loads(bytes(edited))))
    assert accepted > 0  # some edits (a digit for a digit) keep the body valid


@pytest.mark.usefixtures("reader")
def test_integer_pixels_arrive_as_uint8_and_out_of_range_ones_do_not() -> None:
    pixels = _pixels(2)
    for body in (
        json.dumps(pixels.tolist()).encode(),
        json.dumps(pixels.tolist(), indent=1).encode(),
    ):
        fast = fast_pixels(body, SHAPE, 32)  # compact, then indented
        general = parse_json(body, SHAPE, 32, 2**28).batch
        assert fast is not None and general is not None
        assert fast[0].dtype == general.dtype == np.uint8
        np.testing.assert_array_equal(fast[0], pixels)
    pixels[0, 0, 0, 0] = 300  # kept wide, so the predictor's range check refuses it
    fast = fast_pixels(json.dumps(pixels.tolist()).encode(), SHAPE, 32)
    assert fast is not None and fast[0].dtype == np.int64 and fast[0].max() == 300


@pytest.mark.usefixtures("reader")
def test_fast_path_reads_alike_from_many_threads() -> None:
    """Each thread keeps its own parser: bodies read at once never mix."""
    bodies = [
        (json.dumps(_pixels(2, seed).tolist()).encode(), _pixels(2, seed)) for seed in range(4)
    ]

    def read(body: bytes, want: np.ndarray) -> bool:
        for _ in range(200):
            fast = fast_pixels(body, SHAPE, 32)
            if fast is None or not np.array_equal(fast[0], want):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(lambda pair: read(*pair), bodies))


@pytest.mark.usefixtures("reader")
def test_batches_whitespace_and_instance_counts() -> None:
    pixels = _pixels(3)
    spaced = json.dumps(pixels.tolist(), indent=2).replace("[", "[ \t\r\n").encode()
    for body in (spaced, b" \n" + json.dumps({"instances": pixels.tolist()}).encode() + b"\n "):
        fast = fast_pixels(body, SHAPE, 32)
        assert fast is not None and not fast[1]
        np.testing.assert_array_equal(fast[0], pixels)
    body = json.dumps(pixels.tolist()).encode()
    assert fast_pixels(body, SHAPE, 2) is None  # more instances than allowed
    single = fast_pixels(json.dumps(pixels[0].tolist()).encode(), SHAPE, 32)
    assert single is not None and single[1] and single[0].shape == (1, *SHAPE)
    # an {"instances": ...} body holds a list of instances, never one bare instance
    assert fast_pixels(json.dumps({"instances": pixels[0].tolist()}).encode(), SHAPE, 32) is None
    for shape in ((4, 5, 1), (5, 4, 3), (4, 15, 1)):
        assert fast_pixels(body, shape, 32) is None


def test_native_reader_takes_plain_integer_bodies_and_checks_its_arguments() -> None:
    native = jsonbody.lepton_pixels
    if native is None:
        pytest.skip("lepton_pixels is not built (the reader fixture says why)")
    pixels = _pixels(2)
    out = np.zeros(2 * pixels[0].size, dtype=np.uint8)
    assert native.read_uint8(json.dumps(pixels.tolist()).encode(), out, SHAPE, True, 2) == 2
    np.testing.assert_array_equal(out.reshape(pixels.shape), pixels)
    assert native.read_uint8(json.dumps(pixels[0].tolist()).encode(), out, SHAPE, True, 2) == -1
    assert native.read_uint8(json.dumps(pixels[0].tolist()).encode(), out, SHAPE, False, 2) == 0
    assert native.read_uint8(json.dumps((pixels / 2).tolist()).encode(), out, SHAPE, True, 2) == 0
    with pytest.raises(ValueError, match="needed"):
        native.read_uint8(b"[]", out[:10], SHAPE, True, 2)
    with pytest.raises(ValueError, match="positive"):
        native.read_uint8(b"[]", out, (4, 0, 3), True, 2)
    with pytest.raises(TypeError):
        native.read_uint8(b"[]", b"read-only", SHAPE, True, 2)
