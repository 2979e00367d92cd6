"""Before a local run starts: where its data is, what it holds, and the settings that follow.

- `--data` may be a local folder (imported into the data bucket first, with progress) or an
  s3:// prefix; the built-in data sets are imported when their default prefix is empty.
- The data set is named after its input prefix, unless the user names it.
- Image size, channels and training setup follow the data (pipelines/prepare/input_profile.py)
  where the user has not set them; the run prints what it chose and why.
- The gate compares a challenger only with a champion of the same classes and input: when the
  registered model's champion was trained on other data, the run registers under a model name
  of its own (derived from the data set name) and says so; a model name the user gave is kept,
  and an incomparable champion there is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.definition.config import PipelineConfig
from pipelines.settings import Settings
from pipelines.storage import is_s3_uri, s3_client, split_s3_uri

Printer = Callable[[str], None]
BUILTIN_DATASETS = ("mnist-5k", "digits")
CONFIG_CHOICES = ("image_size", "channels", "train_setup")  # what the data may decide


@dataclass(frozen=True)
class RunRequest:
    """What the user asked of `pipeline run`."""

    parameters: Mapping[str, Any] = field(default_factory=dict)  # name -> value (overrides)
    manual_approval: bool = False  # locally a model that passes the gate is approved unless set
    import_limit: int | None = None  # import only this many images (tests, quick looks)
    use_cache: bool = True
    # PipelineConfig fields the user set (strings as on the command line): image_size,
    # channels, train_setup, dataset_name; the rest follow the data
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    cfg: PipelineConfig  # the definition to build
    parameters: dict[str, Any]  # execution parameters (InputDataUri, ModelPackageGroupName...)
    data: dict[str, Any]  # what the run learnt about its data and chose (the run record's)


def dataset_name_of(uri: str) -> str:
    tail = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".jsonl")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.") or "dataset"


def ensure_data(settings: Settings, uri: str, limit: int | None, out: Printer) -> str:
    """The s3:// prefix of the run's raw data: a local folder is imported first; a built-in
    data set is imported when its default prefix is empty."""
    from pipelines.prepare.importers import import_dataset

    if not is_s3_uri(uri):
        folder = Path(uri).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--data {uri}: not an s3:// prefix and not a folder")
        target = f"s3://{settings.data_bucket}/raw/{dataset_name_of(str(folder.resolve()))}"
        out(f"importing {folder} into {target}")
        import_dataset(str(folder), target, settings, limit=limit, log=out)
        return target
    bucket, prefix = split_s3_uri(uri)
    listed = s3_client(settings).list_objects_v2(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/", MaxKeys=1
    )
    if listed.get("KeyCount", 0):
        return uri
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if name not in BUILTIN_DATASETS:
        raise FileNotFoundError(f"no images under {uri}; import some with `lepton data import`")
    out(f"importing {name} into {uri} (first run)")
    import_dataset(name, uri, settings, limit=limit, log=out)
    return uri


def _given_config(cfg: PipelineConfig, config: Mapping[str, str]) -> PipelineConfig:
    from training.serialize import from_hyperparameters

    return from_hyperparameters(PipelineConfig, dict(config), base=cfg, ignore_prefixes=())


def plan_run(settings: Settings, cfg: PipelineConfig, request: RunRequest, out: Printer) -> Plan:
    from pipelines.prepare.input_profile import choose_settings, profile_input
    from pipelines.register import registry

    given = dict(request.parameters)
    data_uri = ensure_data(
        settings, str(given.get("InputDataUri", cfg.input_data_uri)), request.import_limit, out
    )
    given["InputDataUri"] = data_uri
    cfg = _given_config(cfg, request.config)
    if "dataset_name" not in request.config:
        cfg = replace(cfg, dataset_name=dataset_name_of(data_uri))
    profile = profile_input(data_uri, settings)
    data: dict[str, Any] = {"dataset": cfg.dataset_name, "profile": profile.as_dict()}
    undecided = [name for name in CONFIG_CHOICES if name not in request.config]
    if undecided:
        choice = choose_settings(profile)
        cfg = replace(cfg, **{name: getattr(choice, name) for name in undecided})
        data["chosen"] = {name: getattr(choice, name) for name in undecided}
        data["reason"] = choice.reason
        out(
            f"data {cfg.dataset_name}: {profile.files} images, {len(profile.classes)} classes; "
            f"chose {', '.join(f'{k}={v}' for k, v in data['chosen'].items())}: {choice.reason}"
        )

    name = str(given.get("ModelPackageGroupName") or settings.registered_model_name)
    named = "ModelPackageGroupName" in given or settings.model_name_given
    contract = registry.input_contract(profile.classes, cfg.image_size, cfg.channels)
    if registry.champion_contract(settings.with_overrides(registered_model_name=name)) not in (
        None,
        contract,
    ):
        if named:
            raise ValueError(
                f"the champion of model {name} was trained on other classes or another input "
                f"than {cfg.dataset_name} ({len(profile.classes)} classes, "
                f"{cfg.image_size[0]}x{cfg.image_size[1]}x{cfg.channels}): the gate cannot "
                "compare them; give this run a model name of its own (--model-package-group)"
            )
        own = f"{name}-{cfg.dataset_name}"
        out(
            f"model {name}'s champion was trained on other classes or input: this run "
            f"registers as {own} (its own champion and gate)"
        )
        name = own
    given["ModelPackageGroupName"] = name
    data["model_name"] = name
    return Plan(cfg, given, data)
