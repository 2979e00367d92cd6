"""Request bodies in, JSON answers out: shared by the HTTP server and the SageMaker handler.

Accepted ``Content-Type`` (parameters such as ``; charset=`` are ignored):

- ``image/png``, ``image/jpeg`` (``image/jpg``), ``image/webp``, ``image/bmp``,
  ``application/x-image``: one encoded image. The decoder sniffs the bytes, so a JPEG
  labelled ``image/png`` is classified; a GIF/TIFF/PDF labelled as an image is refused (415).
- ``application/x-npy``: one ``.npy`` array, read with ``allow_pickle=False`` after its header
  is checked (numeric dtype, declared size equals the bytes sent): ``[H, W, C]`` (one image) or
  ``[N, H, W, C]`` (a batch), values in 0..255, already preprocessed to the model's size.
- ``application/json``, one of:
  ``{"instances": [INSTANCE, ...]}`` (a batch), ``{"b64": "<base64 image>"}`` (one image), or a
  bare nested array ``[H, W, C]`` / ``[N, H, W, C]``; an ``INSTANCE`` is ``{"b64": "..."}`` or a
  nested ``[H, W, C]`` array of numbers in 0..255.

Every body is bounded before the work it causes (:class:`DecodeLimits`): at most
``max_instances`` instances; the images of one request may declare at most
``max_request_pixels`` pixels in all (read from their headers, 413 before any is decoded); a JSON
body whose parse would need more than ``max_parse_bytes`` is refused unparsed (413), and its
arrays' shapes and element types are checked before a numeric array is made
(:mod:`inference.jsonbody`).

The answer (``application/json``) has one entry per instance, in request order::

    {"predictions": [{"label": "cat", "score": 0.91,
                      "top_k": [{"label": "cat", "score": 0.91}, {"label": "dog", "score": 0.06}],
                      "saliency_png_b64": "..."}]}          # the last key only when explaining
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from inference.config import DEFAULT_MAX_PIXELS
from inference.jsonbody import JsonError, fast_pixels, parse_json
from inference.predictor import Prediction, Predictor
from inference.preprocess import ACCEPTED_FORMATS, ImageRejected

__all__ = [
    "IMAGE_TYPES",
    "JSON_TYPE",
    "NPY_TYPE",
    "DecodeLimits",
    "RequestError",
    "accepts_json",
    "decode_body",
    "decode_inline",
    "encode_predictions",
    "parse_attributes",
]

IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "application/x-image"}
)
NPY_TYPE = "application/x-npy"
JSON_TYPE = "application/json"
SUPPORTED_TYPES = ", ".join(sorted(IMAGE_TYPES | {NPY_TYPE, JSON_TYPE}))

# HTTP status of each preprocessing rejection.
_REJECTION_STATUS = {
    "empty": 400,
    "undecodable": 400,
    "truncated": 400,
    "too_small": 400,
    "too_large": 413,
    "unsupported_format": 415,
}


class RequestError(ValueError):
    """A client error: ``status`` is the HTTP code, the message is safe to send back."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``application/json`` (absent means anything)."""
    if accept is None or not accept.strip():
        return True
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if q > 0 and fields[0].lower() in ("application/json", "application/*", "*/*", "*"):
            return True
    return False


def parse_attributes(*sources: str | None) -> dict[str, str]:
    """``explain=true&top_k=3`` (query) or ``explain=true,top_k=3`` (SageMaker custom
    attributes) -> dict; later sources win."""
    out: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        for item in source.replace(";", ",").replace("&", ",").split(","):
            key, _, value = item.partition("=")
            if key.strip():
                out[key.strip().lower()] = value.strip()
    return out


@dataclass(frozen=True)
class Decoded:
    """A parsed request body: the model's ``[N, H, W, C]`` pixels."""

    pixels: np.ndarray
    single: bool  # the request was one instance rather than a list


@dataclass(frozen=True)
class DecodeLimits:
    """What one request body may cost to decode; each is checked before the work it bounds."""

    max_instances: int = 32  # images per request (the server's max_batch)
    max_request_pixels: int = DEFAULT_MAX_PIXELS  # declared pixels of all its images, together
    max_parse_bytes: int = 256 * 2**20  # estimated memory to parse a JSON body


def _never() -> bool:
    return False


def _reject(exc: ImageRejected, where: str = "") -> RequestError:
    status = _REJECTION_STATUS.get(exc.reason, 400)
    prefix = f"{where}: " if where else ""
    return RequestError(status, f"{prefix}image rejected ({exc})", reason=exc.reason)


def declared_pixels(data: bytes) -> int:
    """Width x height from an image's header, without decoding it (0 if unreadable: decoding
    then refuses it with the precise reason)."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            return int(img.width) * int(img.height)
    except Exception:
        return 0


def _images(
    predictor: Predictor,
    blobs: list[tuple[str, bytes]],
    limits: DecodeLimits,
    cancelled: Callable[[], bool],
) -> dict[str, np.ndarray]:
    """Decode encoded images after checking their declared pixels against the request budget;
    stops between images once ``cancelled()``."""
    # One image within the per-image limit is within the budget: no second header read.
    one_fits = len(blobs) == 1 and predictor.max_pixels <= limits.max_request_pixels
    total = 0 if one_fits else sum(declared_pixels(data) for _, data in blobs)
    if total > limits.max_request_pixels:
        raise RequestError(
            413,
            f"the images of this request declare {total} pixels, over the per-request budget "
            f"of {limits.max_request_pixels}",
            reason="too_large",
        )
    out: dict[str, np.ndarray] = {}
    for where, data in blobs:
        if cancelled():
            raise RequestError(503, "request abandoned")  # nobody is waiting for this answer
        try:
            out[where] = predictor.preprocess(data)
        except ImageRejected as exc:
            raise _reject(exc, where) from None
    return out


def _check_pixels(predictor: Predictor, arr: np.ndarray, max_instances: int) -> Decoded:
    """Accept ``[H, W, C]`` or ``[N, H, W, C]``; validate via the predictor."""
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    if batch.ndim == 4 and batch.shape[0] > max_instances:
        raise RequestError(
            413, f"batch of {batch.shape[0]} instances exceeds the maximum of {max_instances}"
        )
    try:
        predictor.check_batch(batch)
    except ValueError as exc:
        h, w, c = predictor.input_shape
        raise RequestError(400, f"{exc}; send [{h}, {w}, {c}] or [N, {h}, {w}, {c}]") from None
    return Decoded(batch, single)


# The header np.save writes (format 1.0), numeric dtypes only: read without ast.literal_eval,
# which costs ~100 us a request. Anything else takes numpy's own (safe) header reader.
_NPY_HEADER = re.compile(
    rb"\x93NUMPY\x01\x00(..)\{'descr': '([<>|=]?[iuf][1248])', 'fortran_order': (True|False), "
    rb"'shape': \(((?:[0-9]{1,10}, )*(?:[0-9]{1,10},?)?)\), \} *\n",
    re.DOTALL,
)


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """(shape, fortran order, dtype, data offset) of a ``.npy`` body; raises RequestError."""
    match = _NPY_HEADER.match(body)
    if match is not None and match.end() == 10 + int.from_bytes(match.group(1), "little"):
        shape = tuple(int(n) for n in match.group(4).split(b",") if n.strip())
        return shape, match.group(3) == b"True", np.dtype(match.group(2).decode()), match.end()
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise RequestError(400, f"body is not a valid .npy file ({exc})") from None
    return tuple(shape), bool(fortran), dtype, stream.tell()


def load_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` body as an array, read like ``np.load(allow_pickle=False)`` but with its
    header checked first (numeric dtype, declared size equal to the bytes sent), so no object
    array is ever unpickled and no absurd declared shape is ever allocated; the data is then
    viewed in place rather than parsed a second time."""
    shape, fortran, dtype, offset = _npy_header(body)
    if dtype.hasobject or dtype.kind not in "iuf" or dtype.fields is not None:
        raise RequestError(
            400, f".npy dtype {dtype} refused: only integer or float pixels (never pickled objects)"
        )
    count = math.prod(shape)
    if count * dtype.itemsize != len(body) - offset:
        raise RequestError(
            400,
            f".npy header declares shape {list(shape)} of {dtype} but the body holds {len(body) - offset} data bytes",
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)  # read-only view
    return flat.reshape(shape, order="F" if fortran else "C")


def _decode_json(
    predictor: Predictor, body: bytes, limits: DecodeLimits, cancelled: Callable[[], bool]
) -> Decoded:
    fast = fast_pixels(body, predictor.input_shape, limits.max_instances)
    if fast is not None:
        decoded = _check_pixels(predictor, fast[0], limits.max_instances)
        return Decoded(decoded.pixels, single=fast[1])
    try:
        doc = parse_json(body, predictor.input_shape, limits.max_instances, limits.max_parse_bytes)
    except JsonError as exc:
        raise RequestError(exc.status, exc.message) from None
    if doc.batch is not None:
        return Decoded(_check_pixels(predictor, doc.batch, limits.max_instances).pixels, doc.single)
    wheres = ["body"] if doc.single else [f"instances[{i}]" for i in range(len(doc.instances))]
    blobs = [
        (w, item) for w, item in zip(wheres, doc.instances, strict=True) if isinstance(item, bytes)
    ]
    images = _images(predictor, blobs, limits, cancelled)
    arrays = [
        images[w] if isinstance(item, bytes) else item
        for w, item in zip(wheres, doc.instances, strict=True)
    ]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise RequestError(400, "instances have different shapes")
    dtype = np.result_type(*arrays)
    stacked = np.stack(arrays).astype(dtype, copy=False)
    return Decoded(_check_pixels(predictor, stacked, limits.max_instances).pixels, doc.single)


def _check_type(content_type: str | None, body: bytes) -> str:
    kind = media_type(content_type)
    if not kind:
        raise RequestError(415, f"missing Content-Type; supported: {SUPPORTED_TYPES}")
    if kind not in IMAGE_TYPES and kind not in (NPY_TYPE, JSON_TYPE):
        raise RequestError(415, f"unsupported Content-Type {kind!r}; supported: {SUPPORTED_TYPES}")
    if not body:
        raise RequestError(400, "empty body")
    return kind


def decode_body(
    predictor: Predictor,
    body: bytes,
    content_type: str | None,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008 - frozen, shared on purpose
    cancelled: Callable[[], bool] = _never,
) -> Decoded:
    """Parse a request body into validated ``[N, H, W, C]`` pixels; raises RequestError.

    Image decoding and large-body parsing are slow: call this off the event loop (the server
    runs it on :class:`inference.decodepool.DecodePool`); ``cancelled`` is checked between
    images.
    """
    kind = _check_type(content_type, body)
    if kind in IMAGE_TYPES:
        return Decoded(_images(predictor, [("", body)], limits, cancelled)[""][None], single=True)
    if kind == NPY_TYPE:
        return _check_pixels(predictor, load_npy(body), limits.max_instances)
    return _decode_json(predictor, body, limits, cancelled)


def decode_inline(
    predictor: Predictor,
    body: bytes,
    content_type: str | None,
    limits: DecodeLimits,
    max_bytes: int,
) -> Decoded | None:
    """The decoded body if that is cheap enough for the event loop, else None (use
    :func:`decode_body` on a decode thread). Cheap: a refused content type or an empty body,
    and ``.npy`` or numeric JSON of the model's shape up to ``max_bytes``. Never an image, and
    never a general JSON body: a 30 KB PNG can declare 25 megapixels, and JSON can carry base64
    images under keys spelt with escapes."""
    kind = _check_type(content_type, body)
    if len(body) > max_bytes or kind in IMAGE_TYPES:
        return None
    if kind == NPY_TYPE:
        return _check_pixels(predictor, load_npy(body), limits.max_instances)
    fast = fast_pixels(body, predictor.input_shape, limits.max_instances)
    if fast is None:
        return None
    decoded = _check_pixels(predictor, fast[0], limits.max_instances)
    return Decoded(decoded.pixels, single=fast[1])


def encode_predictions(
    predictions: list[Prediction], saliency_png: list[bytes] | None = None
) -> bytes:
    """Top-k lists (and optional saliency PNGs) -> the JSON answer, as UTF-8 bytes."""
    out = []
    for i, top in enumerate(predictions):
        entry: dict[str, Any] = {
            "label": top[0][0],
            "score": top[0][1],
            "top_k": [{"label": label, "score": score} for label, score in top],
        }
        if saliency_png is not None:
            entry["saliency_png_b64"] = base64.b64encode(saliency_png[i]).decode("ascii")
        out.append(entry)
    return json.dumps({"predictions": out}, separators=(",", ":")).encode()


def error_body(message: str, reason: str | None = None) -> bytes:
    doc: dict[str, str] = {"error": message}
    if reason:
        doc["reason"] = reason
    return json.dumps(doc).encode()
