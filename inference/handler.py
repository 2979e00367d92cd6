"""SageMaker PyTorch inference-container shims over the same core as the HTTP server.

Point the SageMaker PyTorch serving container at this module (``entry_point="handler.py"``
with the ``inference`` package in ``source_dir``): it calls ``model_fn`` once, then
``input_fn -> predict_fn -> output_fn`` per request. Bodies and answers are exactly the
server's (:mod:`inference.codec`), so both give identical JSON for identical requests.
Client errors raise :class:`inference.codec.RequestError` (``.status`` is the HTTP code).
``.npy`` bodies are read with ``allow_pickle=False``: the toolkit's default decoder, which
unpickles, is never used. The same decode budgets apply (:class:`inference.codec.DecodeLimits`).
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.codec import (
    IMAGE_TYPES,
    JSON_TYPE,
    NPY_TYPE,
    SUPPORTED_TYPES,
    DecodeLimits,
    RequestError,
    accepts_json,
    decode_body,
    encode_predictions,
    media_type,
)
from inference.predictor import Predictor

__all__ = ["Prediction", "Request", "input_fn", "model_fn", "output_fn", "predict_fn"]

MAX_INSTANCES = 32  # the server's default max_batch: the same requests are refused


@dataclass(frozen=True)
class Prediction:
    """What ``predict_fn`` hands to ``output_fn``."""

    labels: list[list[tuple[str, float]]]


@dataclass(frozen=True)
class Request:
    """What ``input_fn`` hands to ``predict_fn``. Decoding needs the model's input size, and
    ``input_fn`` gets no model, so the body is decoded in ``predict_fn``."""

    body: bytes
    content_type: str


def model_fn(model_dir: str) -> Predictor:
    """Load ``model.onnx`` + ``metadata.json`` from the extracted ``model.tar.gz``."""
    return Predictor.load(model_dir, backend="onnx")


def input_fn(request_body: bytes | bytearray | str, request_content_type: str) -> Request:
    """Accept a request body of one of the server's content types (checked here)."""
    if isinstance(request_body, str):
        request_body = request_body.encode()
    kind = media_type(request_content_type)
    if kind not in IMAGE_TYPES and kind not in (NPY_TYPE, JSON_TYPE):
        raise RequestError(415, f"unsupported Content-Type {kind!r}; supported: {SUPPORTED_TYPES}")
    return Request(bytes(request_body), request_content_type)


def predict_fn(input_data: Request, model: Predictor) -> Prediction:
    """Decode and validate against the model's input, then classify (top-k)."""
    limits = DecodeLimits(max_instances=MAX_INSTANCES)
    decoded = decode_body(model, input_data.body, input_data.content_type, limits)
    return Prediction(model.top_k_labels(model.predict_arrays(decoded.pixels)))


def output_fn(prediction: Prediction, accept: str | None) -> str:
    """The JSON answer; only ``application/json`` (or a wildcard) is produced."""
    if not accepts_json(accept):
        raise RequestError(406, f"cannot answer Accept {accept!r}; only {JSON_TYPE}")
    return encode_predictions(prediction.labels).decode()
