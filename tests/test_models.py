"""The backbone adapter matrix: every registered family, through a tiny random-init instance.

For each: every parameter in exactly one layer group, groups ordered bottom→top (by the order the
forward pass reaches them, and by the index of numbered blocks), the head last and holding exactly
the new head, forward gives (batch, num_classes) logits, and backward reaches every parameter.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import NUM_CLASSES, TINY_BACKBONES, Tiny, build_tiny, one_batch
from torch import nn

from graft.errors import UsageError
from graft.models import (
    Backbone,
    ImagePreprocess,
    LayerGroup,
    TextPreprocess,
    build_backbone,
    families,
    resolve_source,
)
from graft.models.base import check_group_coverage


def test_every_family_has_a_tiny_instance() -> None:
    # A new family registered without a tiny instance in conftest.TINY_BACKBONES fails here.
    assert set(TINY_BACKBONES) == set(families())
    assert all(TINY_BACKBONES[f] for f in families())


@dataclass
class Trace:
    """One forward + backward pass of a tiny backbone, with what it touched and in what order."""

    logits: torch.Tensor
    batch_size: int
    call_order: list[nn.Module]  # modules owning parameters, in the order forward reached them
    never_called: list[str]
    grads: dict[str, torch.Tensor | None]


@pytest.fixture(scope="session")
def trace(tiny_backbone: Backbone) -> Trace:
    model = tiny_backbone.model
    owners = {
        name: m for name, m in model.named_modules() if any(True for _ in m.parameters(False))
    }
    order: list[nn.Module] = []

    def pre_hook(module: nn.Module, _args: object) -> None:
        if module not in order:
            order.append(module)

    handles = [m.register_forward_pre_hook(pre_hook) for m in owners.values()]
    try:
        inputs = one_batch(tiny_backbone, n=4)
        model.train()
        model.zero_grad(set_to_none=True)
        logits = model(**inputs)
        targets = torch.arange(len(logits)) % NUM_CLASSES
        torch.nn.functional.cross_entropy(logits, targets).backward()
    finally:
        for h in handles:
            h.remove()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    never = [n for n, m in owners.items() if m not in order]
    return Trace(logits.detach(), len(targets), order, never, grads)


def _group_index(backbone: Backbone) -> dict[int, int]:
    return {id(p): i for i, g in enumerate(backbone.groups) for _, p in g.params}


def test_coverage_every_parameter_in_exactly_one_group(tiny_backbone: Backbone) -> None:
    check_group_coverage(tiny_backbone.model, tiny_backbone.groups)
    in_groups = [id(p) for g in tiny_backbone.groups for _, p in g.params]
    assert len(in_groups) == len(set(in_groups))
    assert set(in_groups) == {id(p) for p in tiny_backbone.model.parameters()}
    # The names recorded in the groups are the model's own parameter names.
    named = dict(tiny_backbone.model.named_parameters())
    for g in tiny_backbone.groups:
        assert g.params, f"group {g.name} is empty"
        for name, p in g.params:
            assert named[name] is p
    assert len(tiny_backbone.groups) >= 3  # a bottom, something in between, and the head


def test_check_group_coverage_catches_mistakes(tiny_backbone: Backbone) -> None:
    groups = tiny_backbone.groups
    dropped = [LayerGroup(groups[0].name, groups[0].params[1:]), *groups[1:]]
    with pytest.raises(AssertionError, match="in no group"):
        check_group_coverage(tiny_backbone.model, dropped)
    twice = [LayerGroup("extra", groups[0].params[:1]), *groups]
    with pytest.raises(AssertionError, match="groups"):
        check_group_coverage(tiny_backbone.model, twice)
    with pytest.raises(AssertionError, match="head"):
        check_group_coverage(tiny_backbone.model, groups[::-1])


def test_head_group_is_last_and_is_the_new_head(tiny_backbone: Backbone) -> None:
    head = tiny_backbone.groups[-1]
    assert head.name == "head"
    assert {id(p) for _, p in head.params} == {id(p) for p in tiny_backbone.model.head.parameters()}
    assert tiny_backbone.model.head.fc.out_features == NUM_CLASSES
    assert tiny_backbone.group_names().count("head") == 1


def test_groups_follow_forward_order(tiny_backbone: Backbone, trace: Trace) -> None:
    """The group index of parameter-owning modules never decreases along the forward pass: the
    stem/embeddings group is reached first, the head last."""
    index = _group_index(tiny_backbone)
    assert not trace.never_called, f"parameters the forward pass never uses: {trace.never_called}"
    seq = [sorted(index[id(p)] for p in m.parameters(False)) for m in trace.call_order]
    flat = [i for s in seq for i in s]
    assert flat[0] == 0, "the first module the input reaches is not in the first group"
    assert flat[-1] == len(tiny_backbone.groups) - 1
    assert flat == sorted(flat), f"groups out of forward order: {flat}"
    # Every group is reached (none is a bag of unused parameters).
    assert set(flat) == set(range(len(tiny_backbone.groups)))


def test_numbered_blocks_ordered_bottom_to_top(tiny_backbone: Backbone) -> None:
    """Parameters of ``blocks.i`` (``layer.i``, ``features.i`` ...) sit in a group no higher
    than those of ``blocks.i+1``."""
    index = _group_index(tiny_backbone)
    seen: dict[str, dict[int, set[int]]] = {}
    for name, p in tiny_backbone.model.named_parameters():
        for m in re.finditer(r"\.(\d+)\.", f".{name}"):
            container = name[: m.start()] if m.start() else ""
            seen.setdefault(container, {}).setdefault(int(m.group(1)), set()).add(index[id(p)])
    assert seen, "no numbered blocks found"
    for container, by_index in seen.items():
        ordered = [by_index[i] for i in sorted(by_index)]
        for lower, upper in itertools.pairwise(ordered):
            assert max(lower) <= min(upper), f"{container}: {ordered}"


def test_forward_gives_logits(tiny_backbone: Backbone, trace: Trace) -> None:
    assert trace.logits.shape == (trace.batch_size, NUM_CLASSES)
    assert trace.logits.dtype == torch.float32
    assert torch.isfinite(trace.logits).all()
    assert trace.logits.std() > 0  # not a constant output


def test_backward_reaches_every_parameter(trace: Trace) -> None:
    missing = [n for n, g in trace.grads.items() if g is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in trace.grads.values() if g is not None)
    assert any(g.abs().sum() > 0 for g in trace.grads.values() if g is not None)


def test_preprocess_matches_modality(tiny_backbone: Backbone, tiny: Tiny) -> None:
    if tiny_backbone.modality == "image":
        assert isinstance(tiny_backbone.preprocess, ImagePreprocess)
        assert tiny_backbone.preprocess.image_size == tiny.kwargs["image_size"]
        assert tiny_backbone.tokenizer is None
    else:
        assert isinstance(tiny_backbone.preprocess, TextPreprocess)
        assert tiny_backbone.preprocess.max_length == tiny.kwargs["max_length"]
        assert tiny_backbone.tokenizer is not None
    assert tiny_backbone.spec["source"] == tiny.family
    assert tiny_backbone.spec["num_classes"] == NUM_CLASSES


def test_seeded_builds_are_identical(tiny: Tiny, tiny_backbone: Backbone, request) -> None:
    bert = request.getfixturevalue("tiny_bert_dir") if tiny.family == "hf" else None
    again = build_tiny(tiny, bert)
    # Parameters only: the shared instance's BatchNorm statistics moved in its traced forward.
    a, b = dict(tiny_backbone.model.named_parameters()), dict(again.model.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.group_names() == tiny_backbone.group_names()


# --------------------------------------------------------------------------- specifics


def test_named_groups() -> None:
    eff = build_tiny(TINY_BACKBONES["timm"][0], None)
    assert eff.group_names()[0] == "stem"
    assert eff.group_names()[1:3] == ["blocks.0", "blocks.1"]
    resnet = build_backbone("resnet18", num_classes=2, source="torchvision", pretrained=False)
    assert resnet.group_names() == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert {n for n, _ in resnet.groups[0].params} == {
        "body.net.conv1.weight",
        "body.net.bn1.weight",
        "body.net.bn1.bias",
    }


def test_vit_patch_embedding_group_is_the_stem() -> None:
    vit = build_tiny(TINY_BACKBONES["timm"][1], None)
    first = vit.groups[0]
    assert first.name == "stem"
    names = {n for n, _ in first.params}
    assert any("patch_embed" in n for n in names) and any("cls_token" in n for n in names)


def test_bert_groups(tiny_bert_dir: Path) -> None:
    bert = build_tiny(TINY_BACKBONES["hf"][0], tiny_bert_dir)
    assert bert.group_names() == ["embeddings", "layer.0", "layer.1", "head"]
    assert all("embeddings" in n for n, _ in bert.groups[0].params)
    assert all(".layer.1." in n for n, _ in bert.groups[2].params)


def test_fixed_size_vit_runs_at_the_configured_image_size() -> None:
    """A ViT whose patch grid is fixed at its native 224 must still accept data.image_size."""
    torch.manual_seed(0)
    vit = build_backbone(
        "vit_tiny_patch16_224", num_classes=2, source="timm", pretrained=False, image_size=32
    )
    logits = vit.model(**one_batch(vit, n=2))
    assert logits.shape == (2, 2)


def test_resolve_source() -> None:
    assert resolve_source("test_efficientnet") == ("timm", "test_efficientnet")
    assert resolve_source("timm:resnet18") == ("timm", "resnet18")
    assert resolve_source("torchvision:resnet18") == ("torchvision", "resnet18")
    assert resolve_source("mobilenet_v3_small", "torchvision") == (
        "torchvision",
        "mobilenet_v3_small",
    )
    assert resolve_source("minilm") == ("hf", "minilm")
    with pytest.raises(UsageError, match=r"backbone\.name"):
        resolve_source("no_such_network_xyz")


def test_tiny_bert_folder_resolves_to_hf(tiny_bert_dir: Path) -> None:
    assert resolve_source(str(tiny_bert_dir)) == ("hf", str(tiny_bert_dir))


def test_unknown_family() -> None:
    with pytest.raises(UsageError, match="nosuchfamily"):
        build_backbone("x", num_classes=2, source="nosuchfamily", pretrained=False)
