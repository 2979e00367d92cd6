"""training/model.py, augment.py, data.py: shapes, normalisation, pretrained loading, sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.augment import AugmentConfig, augment_batch
from training.data import ArrayDataset, ResumableLoader, ResumableSampler
from training.model import Normalize, build_model


def test_normalize_front_layer_matches_the_contract() -> None:
    layer = Normalize([0.5, 0.25], [0.2, 0.1])
    x = torch.full((1, 2, 3, 3), 51.0)  # 51 / 255 = 0.2
    out = layer(x)
    assert torch.allclose(out[0, 0], torch.full((3, 3), (0.2 - 0.5) / 0.2))
    assert torch.allclose(out[0, 1], torch.full((3, 3), (0.2 - 0.25) / 0.1))


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [
        ("small_cnn", 1, 8),
        ("small_cnn", 3, 32),
        ("resnet18", 1, 28),
        ("resnet18", 3, 96),
        ("mobilenet_v3_small", 3, 64),
        ("efficientnet_b0", 1, 32),
    ],
)
def test_every_arch_gives_k_logits(arch: str, channels: int, size: int) -> None:
    model = build_model(
        arch,
        channels=channels,
        num_classes=7,
        image_size=[size, size],
        mean=[0.5] * channels,
        std=[0.25] * channels,
        width=8,
    ).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, channels, size, size) * 255)
    assert logits.shape == (2, 7)
    assert [p.shape[0] for p in model.head_parameters()] == [7, 7]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_weights_load_from_file_with_new_head(tmp_path: Path, suffix: str) -> None:
    source = build_model(
        "resnet18",
        channels=3,
        num_classes=1000,
        image_size=[96, 96],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    target = build_model(
        "resnet18",
        channels=1,
        num_classes=5,
        image_size=[96, 96],
        mean=[0.5],
        std=[0.25],
        pretrained_weights=str(path),
    )
    loaded = target.backbone.state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    # a 3-channel stem summed into the 1-channel stem; the 1000-class head is not loaded
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert loaded["fc.weight"].shape == (5, 512)
    target.set_backbone_trainable(False)
    trainable = {n for n, p in target.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.fc.weight", "backbone.fc.bias"}


def test_pretrained_weights_that_match_nothing_are_refused(tmp_path: Path) -> None:
    save_file({"foo": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="no tensor"):
        build_model(
            "small_cnn",
            channels=1,
            num_classes=3,
            image_size=[8, 8],
            mean=[0.5],
            std=[0.2],
            pretrained_weights=str(tmp_path / "w.safetensors"),
        )


def test_augmentation_is_seeded_and_keeps_shape() -> None:
    x = torch.rand(4, 1, 8, 8) * 255
    cfg = AugmentConfig(shift_px=1.0, rotate_deg=10.0, scale=0.1, hflip=True)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, AugmentConfig(), torch.Generator()) is x


def test_samplers_split_an_epoch_across_ranks_without_repeats() -> None:
    dataset = ArrayDataset(np.zeros((101, 2, 2, 1), np.uint8), np.arange(101))
    seen: list[int] = []
    for rank in range(2):
        sampler = ResumableSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(3)
        indices = list(sampler)
        assert len(indices) == len(set(indices)) == 51  # no sample twice on a rank
        seen += indices
    assert set(seen) == set(range(101))  # one padding duplicate across ranks, nothing missed


def test_train_loader_resumes_on_the_next_unseen_batch() -> None:
    dataset = ArrayDataset(np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1), np.arange(40))

    def loader() -> ResumableLoader:
        sampler = ResumableSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        return ResumableLoader(dataset, batch_size=8, sampler=sampler, collate_fn=lambda b: b)

    full = loader()
    full.sampler.set_epoch(2)
    batches = [y.tolist() for _, y in full]
    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    next(it), next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [y.tolist() for _, y in resumed] == batches[2:]
    resumed.sampler.set_epoch(3)  # the skip applies once, to the interrupted epoch only
    assert len(list(resumed)) == 5
    x, _ = dataset.__getitems__([0, 1])
    assert x.shape == (2, 1, 1, 1) and x.dtype == torch.uint8
