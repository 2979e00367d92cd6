"""inference/predictor.py, codec.py and handler.py without HTTP, on a tiny contract model."""

from __future__ import annotations

import base64
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference import codec, handler
from inference.codec import RequestError, decode_body
from inference.predictor import ModelMetadata, Predictor
from inference.preprocess import ImageRejected
from inference.testing import write_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def predictor(tiny_dir: Path) -> Predictor:
    return Predictor.load(tiny_dir, threads=1)


def pixels(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_probabilities(predictor: Predictor) -> None:
    probs = predictor.predict_arrays(pixels())
    assert probs.shape == (4, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert predictor.classes == ["circle", "square", "triangle", "cross"]
    assert predictor.input_shape == (32, 32, 3)
    assert predictor.metadata["input_scale"] == "0-255"


def test_batch_independent(predictor: Predictor) -> None:
    batch = pixels(8)
    together = predictor.predict_arrays(batch)
    alone = np.concatenate([predictor.predict_arrays(batch[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_torchscript_matches_onnx(tiny_dir: Path, predictor: Predictor) -> None:
    ts = Predictor.load(tiny_dir, backend="torchscript")
    np.testing.assert_allclose(
        ts.predict_arrays(pixels()), predictor.predict_arrays(pixels()), atol=1e-5
    )


def test_load_tarball(tiny_dir: Path, tmp_path: Path, predictor: Predictor) -> None:
    tar_path = tmp_path / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name in ("model.onnx", "model.pt", "metadata.json"):
            tar.add(tiny_dir / name, arcname=name)
    from_tar = Predictor.load(tar_path)
    np.testing.assert_array_equal(
        from_tar.predict_arrays(pixels()), predictor.predict_arrays(pixels())
    )
    extracted = from_tar.model_dir
    from_tar.close()
    assert not extracted.exists()


def test_top_k_sorted_and_images(predictor: Predictor) -> None:
    batch = pixels(3)
    labels = predictor.predict_images([png(a) for a in batch], k=2)
    assert [len(top) for top in labels] == [2, 2, 2]
    for top in labels:
        assert top[0][1] >= top[1][1]
    assert labels == predictor.top_k_labels(predictor.predict_arrays(batch), 2)
    with pytest.raises(ImageRejected):
        predictor.predict_images([b"not an image"])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 32, 32, 1), np.uint8),
        np.zeros((0, 32, 32, 3), np.uint8),
        np.full((1, 32, 32, 3), np.nan, np.float32),
        np.full((1, 32, 32, 3), 256.0, np.float32),
        np.full((1, 32, 32, 3), -1, np.int16),
        np.zeros((1, 32, 32, 3), np.complex64),
        np.zeros((32, 32, 3), np.uint8),
    ],
)
def test_invalid_batches(predictor: Predictor, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        predictor.predict_arrays(bad)


def test_saliency_png(predictor: Predictor) -> None:
    data = predictor.saliency(pixels(1)[0])
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (32, 32) and img.mode == "L"
    assert np.asarray(img).max() == 255
    assert predictor.saliency(pixels(1)[0]) == data  # deterministic


def test_metadata_version_mismatch_refused() -> None:
    doc = {"classes": ["a"], "image_size": [8, 8], "channels": 1, "preprocessing_version": 999}
    with pytest.raises(ValueError, match="preprocessing version"):
        ModelMetadata.from_dict(doc)
    with pytest.raises(ValueError):
        ModelMetadata.from_dict({"classes": [], "image_size": [8, 8], "channels": 1})


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Predictor.load(tmp_path)


# ------------------------------------------------------------------------------- codec
def test_json_fast_path_equals_general_path(predictor: Predictor) -> None:
    batch = pixels(3)
    fast = decode_body(
        predictor, json.dumps({"instances": batch.tolist()}).encode(), "application/json"
    )
    # A b64 instance forces the general path (json.loads of the whole document).
    mixed = {"instances": [*batch[:2].tolist(), {"b64": base64.b64encode(png(batch[2])).decode()}]}
    general = decode_body(predictor, json.dumps(mixed).encode(), "application/json")
    np.testing.assert_array_equal(fast.pixels, batch)
    np.testing.assert_array_equal(general.pixels, batch)
    single = decode_body(
        predictor, json.dumps(batch[0].tolist()).encode(), "application/json; charset=utf-8"
    )
    assert single.pixels.shape == (1, 32, 32, 3) and single.single
    spaced = json.dumps({"instances": (batch / 2).tolist()}, indent=2).encode()
    np.testing.assert_array_equal(
        decode_body(predictor, spaced, "application/json").pixels, batch / 2
    )


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"", "image/png", 400),
        (b"abc", None, 415),
        (b"abc", "text/plain", 415),
        (b"{", "application/json", 400),
        (b'{"instances": []}', "application/json", 400),
        (b'{"instances": "x"}', "application/json", 400),
        (b'{"b64": "!!!not base64"}', "application/json", 400),
        (b'{"instances": [{"b64": "aGVsbG8="}]}', "application/json", 400),
        (b"[[[NaN]]]", "application/json", 400),
        (b"[[[1, 2], [3]]]", "application/json", 400),
        (b'[[["a"]]]', "application/json", 400),
        (b"[" * 100_000, "application/json", 400),
        (b"\x93NUMPY garbage", "application/x-npy", 400),
        (b"GIF89a\x01\x00\x01\x00", "image/jpeg", 415),
    ],
)
def test_bad_bodies(predictor: Predictor, body: bytes, ctype: str | None, status: int) -> None:
    with pytest.raises(RequestError) as info:
        decode_body(predictor, body, ctype)
    assert info.value.status == status


def test_npy_never_unpickles(predictor: Predictor, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("x",))

    evil = np.array([Evil()], dtype=object)
    with pytest.raises(RequestError, match="object|dtype"):
        decode_body(predictor, npy(evil, allow_pickle=True), "application/x-npy")
    with pytest.raises(RequestError):
        decode_body(predictor, pickle.dumps(evil), "application/x-npy")
    assert not marker.exists()


def test_npy_declared_shape_must_match_bytes(predictor: Predictor) -> None:
    data = npy(pixels(1))
    header_end = data.index(b"\n") + 1
    lying = (
        data[:header_end].replace(b"(1, 32, 32, 3)", b"(9999999, 32, 32, 3)") + data[header_end:]
    )
    with pytest.raises(RequestError, match="declares"):
        decode_body(predictor, lying, "application/x-npy")
    with pytest.raises(RequestError, match="exceeds"):
        limits = codec.DecodeLimits(max_instances=4)
        decode_body(predictor, npy(pixels(5)), "application/x-npy", limits)


def test_accept_and_attributes() -> None:
    assert codec.accepts_json(None) and codec.accepts_json("*/*")
    assert codec.accepts_json("text/html, application/json;q=0.5")
    assert not codec.accepts_json("application/json;q=0, text/csv")
    assert not codec.accepts_json("text/csv")
    assert codec.parse_attributes("explain=true&top_k=2", "explain=false") == {
        "explain": "false",
        "top_k": "2",
    }


# ----------------------------------------------------------------------------- handler
def test_handler_shims(tiny_dir: Path, predictor: Predictor) -> None:
    model = handler.model_fn(str(tiny_dir))
    body = png(pixels(1)[0])
    answer = handler.output_fn(
        handler.predict_fn(handler.input_fn(body, "image/png"), model), "application/json"
    )
    expected = codec.encode_predictions(predictor.predict_images([body])).decode()
    assert answer == expected
    with pytest.raises(RequestError) as info:
        handler.input_fn(body, "text/csv")
    assert info.value.status == 415
    with pytest.raises(RequestError) as info:
        handler.output_fn(
            handler.predict_fn(handler.input_fn(body, "image/png"), model), "text/csv"
        )
    assert info.value.status == 406


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3),
        np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.zeros((0, 8, 8, 1), np.uint8),
        np.float64(3.0).reshape(()),
    ],
)
def test_npy_bodies_read_like_np_load(arr: np.ndarray) -> None:
    body = npy(arr)
    got = codec.load_npy(body)
    want = np.load(io.BytesIO(body), allow_pickle=False)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    # the same header through numpy's own reader (version 2.0 of the format): same answer
    v2 = io.BytesIO()
    np.lib.format.write_array(v2, arr, version=(2, 0))
    np.testing.assert_array_equal(codec.load_npy(v2.getvalue()), want)
