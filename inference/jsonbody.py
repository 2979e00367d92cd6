"""``application/json`` request bodies: sizes and types checked before anything is allocated.

Three steps, each bounded by the one before:

1. :func:`parse_cost_bytes` counts brackets, braces, commas and quotes (C-speed ``bytes.count``)
   and bounds the memory ``json.loads`` would need; a body over the budget is refused (413)
   unparsed. (A 6 MiB body of ``{}`` would otherwise become 2 million dicts, ~500 MB.)
2. ``json.loads`` (no NaN / Infinity literals).
3. Every pixel array's shape and element types are checked on an array of *references*
   (``dtype=object``, 8 bytes an element) before a numeric array is made. ``np.asarray`` on
   the raw lists would first build a string array as wide as the longest string for every
   element: 330 KB of JSON strings became 1.3 GB that way.

Numeric bodies of the model's exact shape take :func:`fast_pixels` instead. Integer pixels
0..255 written plainly go through ``lepton_pixels`` (infra/image/native, C: structure and
numbers in one pass, 2.0 ms for a 224 x 224 x 3 image). Other numbers, or where that module is
not built: the bracket structure is compared with the shape's, then simdjson (a validating C++
parser) reads the numbers straight into an array (7 ms for the same image, where ``json.loads``
alone takes 43 ms; as floats, a 3.1 MB body, 7 ms against 39 ms). Both only ever accept a
valid body; anything they do not take goes the general way.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import simdjson

try:  # infra/image/native: built into the image and the step environment (needs a C compiler)
    import lepton_pixels
except ImportError:  # the pure path below: same answers, ~3.5x slower for integer pixels
    lepton_pixels = None
if os.environ.get("LEPTON_JSON_NATIVE") == "0":  # the pure path on purpose (bench/serve.py)
    lepton_pixels = None

__all__ = ["JsonBody", "JsonError", "fast_pixels", "parse_cost_bytes", "parse_json"]

Shape = tuple[int, int, int]  # (height, width, channels) of one model input


class JsonError(ValueError):
    """A refused JSON body: ``status`` (400 or 413) and a message safe to send back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class JsonBody:
    """A parsed body: per instance a pixel array ``[H, W, C]`` or encoded image bytes; or
    ``batch``, a bare ``[N, H, W, C]`` array."""

    instances: list[np.ndarray | bytes]
    single: bool
    batch: np.ndarray | None = None


def parse_cost_bytes(body: bytes) -> int:
    """An upper bound of the memory ``json.loads(body)`` allocates, in bytes: ~48 per value
    (element pointer + number), 64 per string, 96 per list, 256 per object, and 4 per body byte
    for string contents (UCS-4 at worst). Structure inside strings only makes it larger."""
    return (
        4 * len(body)
        + 48 * (body.count(b",") + 1)
        + 32 * body.count(b'"')
        + 96 * body.count(b"[")
        + 256 * body.count(b"{")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid pixel value")


def _narrow(arr: np.ndarray) -> np.ndarray:
    """Integer pixels all in 0..255 as uint8, the dtype the model's path takes fastest (no range
    check again, a cheaper conversion to float); anything else as it is."""
    if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    return arr


def _numbers(value: list[Any], shape: Shape, where: str, max_instances: int) -> np.ndarray:
    """A nested list of numbers of shape ``shape`` (or ``[N, *shape]`` when ``max_instances``
    > 0) -> a float64 array of that shape, or an integer one (uint8 when 0..255, else int64)."""
    try:
        refs = np.array(value, dtype=object)  # shape discovery; elements stay Python objects
    except (ValueError, TypeError, RecursionError) as exc:
        raise JsonError(400, f"{where}: not a rectangular array ({exc})") from None
    batch = max_instances > 0 and refs.ndim == 4 and refs.shape[1:] == shape
    if batch and refs.shape[0] > max_instances:
        raise JsonError(
            413, f"batch of {refs.shape[0]} instances exceeds the maximum of {max_instances}"
        )
    if refs.shape != shape and not batch:
        h, w, c = shape
        want = f"[{h}, {w}, {c}]" + (f" or [N, {h}, {w}, {c}]" if max_instances else "")
        raise JsonError(
            400,
            f"{where}: array of shape {list(refs.shape)} (ragged or wrong); "
            f"send {want} (height, width, channels)",
        )
    flat = refs.ravel().tolist()
    kinds = set(map(type, flat))
    if not kinds <= {int, float}:
        found = ", ".join(sorted(k.__name__ for k in kinds - {int, float}))
        raise JsonError(400, f"{where}: array must hold only numbers (found {found})")
    try:
        arr = np.array(flat, dtype=np.float64 if float in kinds else np.int64)
        return _narrow(arr.reshape(refs.shape))
    except OverflowError:
        raise JsonError(400, f"{where}: a pixel value is out of range") from None


def _instance(item: Any, shape: Shape, where: str) -> np.ndarray | bytes:
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise JsonError(400, f'{where}: an instance object must be {{"b64": "<base64 image>"}}')
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JsonError(400, f"{where}: invalid base64 ({exc})") from None
    if isinstance(item, list):
        return _numbers(item, shape, where, 0)
    raise JsonError(
        400, f'{where}: expected {{"b64": ...}} or a nested array, got {type(item).__name__}'
    )


def parse_json(body: bytes, shape: Shape, max_instances: int, max_parse_bytes: int) -> JsonBody:
    """Parse and type-check a JSON body; raises JsonError (400, or 413 over a budget)."""
    cost = parse_cost_bytes(body)
    if cost > max_parse_bytes:
        raise JsonError(
            413,
            f"parsing this JSON body would need about {cost // 2**20} MiB, over the budget of "
            f"{max_parse_bytes // 2**20} MiB; send fewer values, or .npy / images",
        )
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonError(400, "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonError(400, f"body is not valid JSON ({exc})") from None
    if isinstance(doc, list):
        arr = _numbers(doc, shape, "body", max_instances)
        return JsonBody([], single=arr.ndim == 3, batch=arr if arr.ndim == 4 else arr[None])
    if not isinstance(doc, dict):
        raise JsonError(400, 'JSON body must be {"instances": [...]}, {"b64": "..."} or an array')
    if "b64" in doc and "instances" not in doc:
        return JsonBody([_instance(doc, shape, "body")], single=True)
    instances = doc.get("instances")
    if set(doc) != {"instances"} or not isinstance(instances, list):
        raise JsonError(
            400, 'JSON body must be {"instances": [...]} with a list, {"b64": "..."} or an array'
        )
    if not instances:
        raise JsonError(400, "instances is empty: send at least one")
    if len(instances) > max_instances:
        raise JsonError(
            413, f"batch of {len(instances)} instances exceeds the maximum of {max_instances}"
        )
    return JsonBody(
        [_instance(item, shape, f"instances[{i}]") for i, item in enumerate(instances)],
        single=False,
    )


_SKELETON_CACHE: dict[tuple[int, ...], bytes] = {}
_INSTANCES_PREFIX = re.compile(rb'\A\s*\{\s*"instances"\s*:\s*')


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a JSON array of ``shape`` with the numbers removed."""
    cached = _SKELETON_CACHE.get(shape)
    if cached is None:
        cached = b"," * (shape[-1] - 1)
        for size in reversed(shape[:-1]):
            cached = b",".join([b"[" + cached + b"]"] * size)
        cached = b"[" + cached + b"]"
        if len(_SKELETON_CACHE) < 256:
            _SKELETON_CACHE[shape] = cached
    return cached


_NUMBER_CHARS = b"0123456789.eE+- \t\r\n"  # what numbers and whitespace are made of


_BUFFER_TYPES: tuple[tuple[Literal["i", "d"], type[np.generic]], ...] = (
    ("i", np.int64),
    ("d", np.float64),
)
_PARSERS = threading.local()  # a simdjson parser is reused, one per thread (not thread-safe)


def _simd_numbers(text: bytes, count: int) -> np.ndarray | None:
    """The ``count`` numbers of ``text`` (an array whose skeleton has been checked) read by
    simdjson, a validating parser: its number syntax is JSON's, and only numbers pass. int64
    when all are integers (uint8 when all are pixels), else float64; None for anything else.
    224 x 224 x 3 integer body: 2.2 ms, against 3.8 ms for the numpy digit passes this
    replaced."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    doc = None
    try:
        doc = parser.parse(text)
        if not isinstance(doc, simdjson.Array):
            return None
        for of_type, dtype in _BUFFER_TYPES:
            try:
                values = np.frombuffer(doc.as_buffer(of_type=of_type), dtype=dtype)
            except TypeError:  # not all integers (then try floats), or not all numbers
                continue
            return _narrow(values) if len(values) == count else None
        return None
    except (ValueError, RuntimeError):  # a number too large, not JSON, a parser in use
        return None
    finally:
        del doc  # the parser may be reused only once nothing refers to its document


def _full_shape(
    skeleton: bytes, count: int, shape: Shape, single_allowed: bool, max_instances: int
) -> tuple[int, ...] | None:
    """``shape`` or ``[N, *shape]``, as the skeleton's nesting depth and value count say; None
    when they fit neither."""
    depth = len(skeleton) - len(skeleton.lstrip(b"["))
    size = shape[0] * shape[1] * shape[2]
    if depth == 3 and single_allowed and count == size:
        return shape
    if depth == 4 and count % size == 0 and 0 < count // size <= max_instances:
        return (count // size, *shape)
    return None


def _native_pixels(
    text: bytes | memoryview, shape: Shape, single_allowed: bool, max_instances: int
) -> tuple[np.ndarray, bool] | None:
    """Integer pixels 0..255 written plainly (as ``json.dumps`` writes them), structure and
    numbers checked in one C pass with the GIL released: 2.0 ms for a 224 x 224 x 3 body where
    the path below takes 7 ms. None for any other body (floats, larger integers, ...)."""
    size = shape[0] * shape[1] * shape[2]
    out = np.empty(size * max(1, max_instances), dtype=np.uint8)
    found = lepton_pixels.read_uint8(text, out, shape, single_allowed, max_instances)
    if found == 0:
        return None
    if found < 0:
        return out[:size].reshape(1, *shape), True
    return out[: found * size].reshape(found, *shape), False


def fast_pixels(body: bytes, shape: Shape, max_instances: int) -> tuple[np.ndarray, bool] | None:
    """A body that is a rectangular array of numbers of the model's shape (bare, or as
    ``{"instances": ...}``) -> (``[N, H, W, C]`` array, single), several times faster than the
    general path: the bracket structure is compared with the shape's, then simdjson reads the
    numbers as one flat buffer (its number syntax is exactly JSON's). Anything else, strings and
    escapes included, gives None: take :func:`parse_json`, which words the error."""
    text = body.strip()
    single_allowed = True
    match = _INSTANCES_PREFIX.match(text)
    if match is not None:
        if not text.endswith(b"}"):
            return None
        if lepton_pixels is not None:
            native = _native_pixels(memoryview(text)[match.end() : -1], shape, False, max_instances)
            if native is not None:
                return native
        text = text[match.end() : -1].strip()
        single_allowed = False
    elif lepton_pixels is not None:
        native = _native_pixels(text, shape, True, max_instances)
        if native is not None:
            return native
    if not (text.startswith(b"[") and text.endswith(b"]")):
        return None
    skeleton = text.translate(None, _NUMBER_CHARS)
    if skeleton.translate(None, b",[]"):
        return None  # strings, objects, literals: the general path
    count = skeleton.count(b",") + 1  # a regular array has one comma fewer than numbers
    full = _full_shape(skeleton, count, shape, single_allowed, max_instances)
    if full is None or skeleton != _skeleton(full):
        return None  # ragged, or not the model's shape
    pixels = _simd_numbers(text, count)
    if pixels is None:
        return None
    if pixels.dtype.kind not in "iuf":
        return None
    pixels = pixels.reshape(full)
    return (pixels, False) if len(full) == 4 else (pixels[None], True)
