"""Before a local run: the data's place, name and profile, the settings that follow from it,
and a model name of its own when the champion was trained on other data."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.definition.config import PipelineConfig
from pipelines.prepare.input_profile import InputProfile, choose_settings, profile_input
from pipelines.register import registry
from pipelines.runner.plan import RunRequest, plan_run
from pipelines.runner.run import local_config
from pipelines.settings import Settings


def _textures(root: Path, classes: int = 3, per_class: int = 12, side: int = 64) -> Path:
    """Colour 'texture photos': `side` px RGB stripes, a few grayscale ones among them."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            pixels[:, :, c] = 255
            img = Image.fromarray(pixels)
            if i == 0:
                img = img.convert("L")
            (root / f"texture-{c}").mkdir(parents=True, exist_ok=True)
            img.save(root / f"texture-{c}" / f"{i}.png")
    return root


def _profile(**changes: object) -> InputProfile:
    base = {
        "source": "s3://b/raw/x",
        "files": 100,
        "classes": ("a", "b"),
        "sampled": 100,
        "median_height": 28,
        "median_width": 28,
        "colour_share": 0.0,
        "unreadable": 0,
    }
    return InputProfile(**{**base, **changes})  # type: ignore[arg-type]


def test_the_settings_follow_the_data() -> None:
    digits = choose_settings(_profile())
    assert (digits.image_size, digits.channels, digits.train_setup) == (
        (28, 28),
        1,
        "mnist_default",
    )
    small_colour = choose_settings(_profile(median_height=32, median_width=32, colour_share=0.9))
    assert (small_colour.image_size, small_colour.channels) == ((32, 32), 3)
    photos = choose_settings(_profile(median_height=64, median_width=80, colour_share=0.8))
    assert (photos.image_size, photos.channels, photos.train_setup) == ((64, 64), 3, "photos")
    assert "64x80" in photos.reason and "colour" in photos.reason
    large = choose_settings(_profile(median_height=480, median_width=640, colour_share=1.0))
    assert large.image_size == (224, 224)


def test_a_local_folder_of_photos_is_imported_named_and_profiled(
    stack_settings: Settings, tmp_path: Path
) -> None:
    folder = _textures(tmp_path / "textures")
    settings = stack_settings.with_overrides(registered_model_name=f"plan-{uuid.uuid4().hex[:6]}")
    lines: list[str] = []
    plan = plan_run(
        settings,
        local_config(settings),
        RunRequest(parameters={"InputDataUri": str(folder)}),
        lines.append,
    )
    assert plan.parameters["InputDataUri"] == f"s3://{settings.data_bucket}/raw/textures"
    assert plan.cfg.dataset_name == "textures"
    assert (plan.cfg.image_size, plan.cfg.channels, plan.cfg.train_setup) == ((64, 64), 3, "photos")
    assert plan.data["chosen"]["train_setup"] == "photos" and "colour" in plan.data["reason"]
    assert plan.data["profile"]["files"] == 36 and plan.data["profile"]["classes"] == 3
    assert any("importing" in line for line in lines) and any("chose" in line for line in lines)
    # what the user sets is kept; the rest still follows the data
    plan = plan_run(
        settings,
        local_config(settings),
        RunRequest(parameters={"InputDataUri": str(folder)}, config={"image_size": "48"}),
        lambda _m: None,
    )
    assert plan.cfg.image_size == (48, 48) and plan.cfg.channels == 3
    assert "image_size" not in plan.data["chosen"]


def test_an_incomparable_champion_gives_the_run_a_model_name_of_its_own(
    stack_settings: Settings, raw_mnist_dir: Path, trained_model_dir: Path, tmp_path: Path
) -> None:
    """The champion (8x8 digits) was trained on another input than these 28x28 digits."""
    name = f"plan-{uuid.uuid4().hex[:6]}"
    settings = stack_settings.with_overrides(registered_model_name=name)
    ref = registry.register_model(settings, trained_model_dir, None, {}, 0.9)
    registry.approve(settings, ref.version)
    assert registry.champion_contract(settings) is not None

    cfg = PipelineConfig(model_package_group=name)
    data = {"InputDataUri": str(raw_mnist_dir)}
    lines: list[str] = []
    plan = plan_run(settings, cfg, RunRequest(parameters=data), lines.append)
    own = f"{name}-mnist"
    assert plan.parameters["ModelPackageGroupName"] == own and plan.data["model_name"] == own
    assert any(f"registers as {own}" in line for line in lines)
    # a model name the user gave is kept, and the mismatch is an error saying why
    with pytest.raises(ValueError, match="cannot compare"):
        plan_run(
            settings,
            cfg,
            RunRequest(parameters={**data, "ModelPackageGroupName": name}),
            lambda _m: None,
        )
    # the same input as the champion's: compared with it, under the default name
    profile = profile_input(plan.parameters["InputDataUri"], settings)
    assert profile.classes == tuple(str(d) for d in range(10)) and profile.median_height == 28
