"""What an input holds, from its listing and a sample of its images, and the settings that fit.

`profile_input` lists the input (every key: class folders, counts) and reads an even sample of
its images (header and a thumbnail only) for their sizes and whether they are in colour.
`choose_settings` turns that into the image size, channels and training setup a run uses when
the user has not set them, with the reason in words. Both are cheap next to Prepare itself:
a listing plus a couple of hundred small reads.
"""

from __future__ import annotations

import io
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipelines.prepare.items import has_image_extension
from pipelines.prepare.reading import make_client, read_item
from pipelines.prepare.sources import list_source
from pipelines.settings import Settings

SAMPLE = 200  # images read for the profile (evenly spread over the sorted listing)
COLOUR_SHARE = 0.05  # more colour images than this in the sample -> 3 channels
COLOUR_SPREAD = 8  # a pixel whose channels differ by more than this (0..255) is colour
SMALL_SIDE = 40  # px: at most this (median shorter side) is "small", like digits


@dataclass(frozen=True)
class InputProfile:
    source: str
    files: int  # image files listed
    classes: tuple[str, ...]  # class folders, sorted
    sampled: int  # images read
    median_height: int  # px
    median_width: int  # px
    colour_share: float  # of the sampled images, 0..1
    unreadable: int  # sampled images that did not decode (Prepare will quarantine them)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "classes": len(self.classes),
            "sampled": self.sampled,
            "median_size": [self.median_height, self.median_width],
            "colour_share": round(self.colour_share, 3),
            "unreadable": self.unreadable,
        }


@dataclass(frozen=True)
class Choice:
    image_size: tuple[int, int]
    channels: int
    train_setup: str  # a training.config named setup
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "channels": self.channels,
            "train_setup": self.train_setup,
            "reason": self.reason,
        }


def _look(data: bytes) -> tuple[int, int, bool] | None:
    """(height, width, in colour) of an encoded image, or None when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return height, width, False
            img.thumbnail((32, 32))
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    pixels = rgb.tobytes()
    spread = max(max(pixels[i : i + 3]) - min(pixels[i : i + 3]) for i in range(0, len(pixels), 3))
    return height, width, spread > COLOUR_SPREAD


def profile_input(uri: str, settings: Settings | None, sample: int = SAMPLE) -> InputProfile:
    listing = list_source(uri, settings, names_only=True)  # the profile needs no sizes or hashes
    images = [it for it in listing.items if it.issue is None and has_image_extension(it.key)]
    if not images:
        raise ValueError(f"no images found under {uri}")
    step = max(1, len(images) // sample)
    picked = images[::step][:sample]
    client = make_client(settings)

    def look(item: Any) -> tuple[int, int, bool] | None:
        try:
            return _look(read_item(item, client))
        except OSError:
            return None

    with ThreadPoolExecutor(16) as pool:
        looks = list(pool.map(look, picked))
    seen = [x for x in looks if x is not None]
    if not seen:
        raise ValueError(f"none of {len(picked)} sampled images under {uri} could be decoded")
    return InputProfile(
        source=uri,
        files=len(images),
        classes=tuple(sorted({it.label for it in images if it.label})),
        sampled=len(seen),
        median_height=int(statistics.median(h for h, _, _ in seen)),
        median_width=int(statistics.median(w for _, w, _ in seen)),
        colour_share=sum(c for _, _, c in seen) / len(seen),
        unreadable=len(looks) - len(seen),
    )


def choose_settings(profile: InputProfile) -> Choice:
    """Image size, channels and training setup that fit the data (documented in the README)."""
    channels = 3 if profile.colour_share > COLOUR_SHARE else 1
    side = min(profile.median_height, profile.median_width)
    size = f"{profile.median_height}x{profile.median_width}"
    colour = (
        f"{profile.colour_share:.0%} of {profile.sampled} sampled images in colour"
        if channels == 3
        else f"grayscale ({profile.colour_share:.0%} of {profile.sampled} sampled in colour)"
    )
    if side <= SMALL_SIDE:
        target = 28 if side <= 28 else 32
        return Choice(
            (target, target),
            channels,
            "mnist_default",
            f"small images (median {size} px), {colour}: {target}x{target}, the small CNN",
        )
    target = max(64, min(224, side // 32 * 32))
    return Choice(
        (target, target),
        channels,
        "photos",
        f"larger images (median {size} px), {colour}: {target}x{target}, a resnet18 from "
        "scratch with flips and random zoom",
    )
