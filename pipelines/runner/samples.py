"""Held-out test images of an execution, sent to the deployed endpoint as a last check."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.request
from collections.abc import Callable
from typing import Any

from inference.security import client_headers
from pipelines.definition import names as n
from pipelines.runner.state import Execution
from pipelines.settings import Settings
from pipelines.storage import s3_client


def held_out_images(settings: Settings, execution: Execution) -> tuple[list[str], Any, Any]:
    """(classes, uint8 NHWC images, labels) of the test split this execution trained on.

    Read from the Prepare step's output in S3, so it works when every step came from cache.
    """
    from pipelines.runner import transfer
    from training.shards import load_split, read_manifest

    prepare = execution.steps[n.PREPARE]
    outputs = prepare.properties["ProcessingOutputConfig"]["Outputs"]
    uri = next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == n.DATASET_OUTPUT)
    folder = execution.folder / "held-out"
    if not (folder / "manifest.json").exists():
        # into a folder beside it, then renamed: a download cut short (the manifest comes
        # first in key order) is never taken for the whole split
        partial = folder.with_name("held-out.part")
        shutil.rmtree(partial, ignore_errors=True)
        transfer.download(s3_client(settings), uri, partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    return read_manifest(folder)["classes"], *load_split(folder, "test")


def classify_samples(
    settings: Settings, execution: Execution, out: Callable[[str], None], count: int = 8
) -> list[dict[str, Any]]:
    """Send a few held-out test images to the endpoint as PNG and report the answers."""
    from PIL import Image

    classes, images, labels = held_out_images(settings, execution)
    answers = []
    for i in range(min(count, len(labels))):
        pixels = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        request = urllib.request.Request(
            settings.endpoint_url + "/invocations",
            data=buf.getvalue(),
            headers={"Content-Type": "image/png", "Accept": "application/json", **client_headers()},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = json.loads(resp.read())
        answers.append({"true": classes[int(labels[i])], "predicted": top_label(body)})
    right = sum(a["true"] == a["predicted"] for a in answers)
    out(f"endpoint classified {right}/{len(answers)} held-out test images correctly")
    return answers


def top_label(body: Any) -> str | None:
    """The top label of the first prediction in an endpoint answer (docs/contracts.md)."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    return str(predictions[0]["label"]) if predictions else None
