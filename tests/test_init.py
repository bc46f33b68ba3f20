"""Initialization policies: re-initializing the top groups or the whole body, the head's init
statistics, and the linear-probe head fit."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from graft.init import (
    HEAD_INITS,
    fit_head_linear_probe,
    init_head,
    random_init,
    reinit_groups,
    reinit_top,
)
from graft.models.base import Head


@pytest.fixture(scope="module")
def pretrained() -> Iterator[Any]:
    """A tiny EfficientNet whose every parameter and BatchNorm statistic has been moved away from
    its init, standing in for pretrained weights."""
    from graft.models import build_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b = build_backbone("test_efficientnet", num_classes=3, pretrained=False, image_size=32)
    with torch.no_grad():
        for t in (*b.model.parameters(), *b.model.buffers()):
            if t.is_floating_point():
                t.add_(torch.rand_like(t) + 0.5)
    yield b
    torch.set_num_threads(threads)


def _state(b: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in b.model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], b: Any) -> set[str]:
    return {k for k, v in b.model.state_dict().items() if not torch.equal(before[k], v)}


def _params_of(b: Any, groups: list[str]) -> set[str]:
    return {n for g in b.groups if g.name in groups for n, _ in g.params}


def test_reinit_top_changes_exactly_the_top_groups(pretrained: Any) -> None:
    b = copy.deepcopy(pretrained)
    body = [g for g in b.group_names() if g != "head"]
    before = _state(b)
    torch.manual_seed(3)
    assert reinit_top(b, 2) == body[-2:]
    changed = _changed(before, b)
    top = _params_of(b, body[-2:])
    # Every parameter of the top two groups, and nothing else among the parameters.
    params = {n for n, _ in b.model.named_parameters()}
    assert changed & params == top
    # The BatchNorm statistics of those groups are back to their init (mean 0, variance 1).
    stats = {k for k in changed - params}
    assert stats and all(k.rsplit(".", 1)[0] + ".weight" in top for k in stats)
    bn2 = b.model.body.net.bn2
    assert torch.equal(bn2.running_mean, torch.zeros_like(bn2.running_mean))
    assert torch.equal(bn2.running_var, torch.ones_like(bn2.running_var))
    assert torch.equal(bn2.weight, torch.ones_like(bn2.weight))  # the architecture's norm init
    # The same seed gives the same weights.
    again = copy.deepcopy(pretrained)
    torch.manual_seed(3)
    reinit_top(again, 2)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in b.model.state_dict().items())


def test_reinit_top_zero_and_bad_k(pretrained: Any) -> None:
    b = copy.deepcopy(pretrained)
    before = _state(b)
    assert reinit_top(b, 0) == []
    assert not _changed(before, b)
    n_body = len(b.groups) - 1
    for bad in (-1, n_body + 1, 1.0, True):
        with pytest.raises(ValueError, match="k must be an integer between 0 and"):
            reinit_top(b, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not body groups"):
        reinit_groups(b, ["head"])


@pytest.mark.parametrize("method", ["normal", "uniform"])
def test_random_init_with_a_scale(pretrained: Any, method: str) -> None:
    b = copy.deepcopy(pretrained)
    head_before = {n: p.clone() for n, p in b.model.head.named_parameters()}
    torch.manual_seed(0)
    random_init(b, method, scale=0.05)  # type: ignore[arg-type]
    weights = torch.cat(
        [p.flatten() for g in b.groups[:-1] for n, p in g.params if p.ndim > 1]
    ).detach()
    if method == "normal":
        assert weights.std().item() == pytest.approx(0.05, rel=0.05)
    else:
        assert weights.abs().max().item() <= 0.05
        assert weights.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.05)
    for m in b.model.body.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            assert m.running_mean is not None
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
    for n, p in b.model.head.named_parameters():
        assert torch.equal(p, head_before[n])  # the head is not the body's


def test_random_init_default_replaces_every_body_parameter(pretrained: Any) -> None:
    b = copy.deepcopy(pretrained)
    before = _state(b)
    random_init(b)
    body = _params_of(b, [g.name for g in b.groups[:-1]])
    params = {n for n, _ in b.model.named_parameters()}
    assert _changed(before, b) & params == body


def test_init_head_statistics() -> None:
    fan_in, fan_out = 1024, 512
    torch.manual_seed(0)
    for method in HEAD_INITS:
        head = Head(fan_in, fan_out)
        init_head(head, method, std=0.03)  # type: ignore[arg-type]
        w, b = head.fc.weight.detach(), head.fc.bias
        assert b is not None and torch.equal(b, torch.zeros_like(b)), method
        if method == "zeros":
            assert torch.equal(w, torch.zeros_like(w))
            continue
        expected_std = {
            "xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),
            "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
            "kaiming_uniform": math.sqrt(2 / fan_in),
            "kaiming_normal": math.sqrt(2 / fan_in),
            "normal": 0.03,
        }[method]
        assert w.std().item() == pytest.approx(expected_std, rel=0.02), method
        assert abs(w.mean().item()) < 0.01 * expected_std * 10, method
        if method.endswith("uniform"):
            bound = expected_std * math.sqrt(3)  # sqrt(6 / (fan_in + fan_out)) for xavier
            assert w.abs().max().item() <= bound
            assert w.abs().max().item() > 0.99 * bound
    with pytest.raises(ValueError, match="head init must be one of"):
        init_head(Head(4, 2), "orthogonal")  # type: ignore[arg-type]


def test_init_head_is_deterministic() -> None:
    a, b = nn.Linear(8, 3), nn.Linear(8, 3)
    torch.manual_seed(5)
    init_head(a, "kaiming_normal")
    torch.manual_seed(5)
    init_head(b, "kaiming_normal")
    assert torch.equal(a.weight, b.weight)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 16-D, then scaled and shifted far from standard (as pooled
    features often are), so the fit must fold its standardization back correctly."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + torch.randn(n, 16, generator=g)
    scale = torch.linspace(0.01, 100, 16)
    return x * scale + 50.0, y


def test_linear_probe_head_fits_separable_features() -> None:
    x, y = _blobs(300, 1)
    head = Head(16, 3)
    init_head(head, "zeros")
    fit = fit_head_linear_probe(head, x, y)
    assert fit["accuracy"] > 0.97
    x_test, y_test = _blobs(300, 2)
    with torch.no_grad():
        accuracy = (head(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.95
    # Deterministic: the same fit twice gives the same head.
    again = Head(16, 3)
    fit_head_linear_probe(again, x, y)
    assert torch.equal(again.fc.weight, head.fc.weight)


def test_linear_probe_head_on_a_backbone(pretrained: Any) -> None:
    b = copy.deepcopy(pretrained)
    width = b.model.head.fc.in_features
    x, y = torch.randn(60, width), torch.arange(60) % 3
    x[torch.arange(60), y] += 5.0  # class c lights up feature c
    fit = fit_head_linear_probe(b, x, y, l2=1e-2, max_iter=50)
    assert fit["accuracy"] == 1.0
    with pytest.raises(ValueError, match="features must be"):
        fit_head_linear_probe(b, x[:, :5], y)
    with pytest.raises(ValueError, match="class indices"):
        fit_head_linear_probe(b, x, y + 1)


@pytest.mark.integration
def test_reinit_top_of_a_pretrained_bert() -> None:
    """transformers 5.x marks loaded weights ``_is_hf_initialized`` and its ``_init_weights`` then
    skips them silently: reinit_top must still replace the top layers, with BERT's init."""
    from graft.errors import DataError
    from graft.models import build_backbone

    try:
        b = build_backbone("minilm", num_classes=2)
    except DataError as e:
        pytest.skip(f"no offline MiniLM: {e}")
    before = _state(b)
    torch.manual_seed(0)
    assert reinit_top(b, 2) == ["layer.4", "layer.5"]
    params = {n for n, _ in b.model.named_parameters()}
    assert _changed(before, b) & params == _params_of(b, ["layer.4", "layer.5"])
    encoder: Any = b.model.body.encoder
    layer = encoder.encoder.layer[5]
    std = encoder.config.initializer_range
    assert layer.attention.self.query.weight.std().item() == pytest.approx(std, rel=0.05)
    norm = layer.output.LayerNorm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert torch.equal(layer.output.dense.bias, torch.zeros_like(layer.output.dense.bias))


def test_reinit_of_an_unknown_adapter_uses_each_layers_reset(pretrained: Any) -> None:
    """Without a spec to rebuild from, each layer's own ``reset_parameters()`` is the init."""
    b = copy.deepcopy(pretrained)
    b.spec = {}
    before = _state(b)
    names = reinit_top(b, 1)
    params = {n for n, _ in b.model.named_parameters()}
    assert _changed(before, b) & params == _params_of(b, names)
    bn2 = b.model.body.net.bn2
    assert torch.equal(bn2.running_var, torch.ones_like(bn2.running_var))
