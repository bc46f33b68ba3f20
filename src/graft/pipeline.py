"""From raw examples to model-ready batches, with the backbone's preprocessing.

Batches are fetched whole (``__getitems__``): an in-memory image set is indexed, resized and
normalised as one tensor operation per batch instead of one Python call per image, and text is
tokenised once up front and padded per batch to its longest sequence (no fixed 128/512 padding).
Shuffling is a pure function of (seed, epoch), so a resumed run sees the same batches, and it can
start in the middle of an epoch without loading the batches before. Every random draw of data
augmentation is a pure function of (seed, epoch, batch): it is the same whether the main process
or a worker makes it, with any number of workers, and in a run resumed mid-epoch. That is how the
loader workers' RNG is reproducible without saving it: there is nothing to save.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from graft.augment import BatchMix, ImageTransform, apply_per_image
from graft.data.digest import hash_examples
from graft.data.types import Examples
from graft.models.base import ImagePreprocess, TextPreprocess

# {"inputs": {name: tensor}, "targets": tensor | None}, and "teacher": logits when distilling
Batch = dict[str, Any]


def empty_targets(dataset: Any, n: int) -> torch.Tensor:
    """An uninitialised tensor for ``n`` of a dataset's targets, of their type and shape: int64
    class indexes, a regression's floats, a multi-label example's row of 0/1 floats."""
    targets = getattr(dataset, "targets", None)
    if targets is None or not np.issubdtype(targets.dtype, np.floating):
        return torch.empty(n, dtype=torch.long)
    return torch.empty((n, *targets.shape[1:]), dtype=torch.from_numpy(targets[:0]).dtype)


def _digest(targets: np.ndarray | None) -> Any:
    """A hash object started with a dataset's targets (or their absence)."""
    h = hashlib.blake2b(digest_size=16)
    if targets is None:
        h.update(b"no targets")
    else:
        h.update(f"{targets.dtype}{targets.shape}".encode())
        h.update(np.ascontiguousarray(targets).data)
    return h


class BatchIndex(list[int]):
    """The example indexes of one batch, and where the batch stands: ``epoch`` and ``position``
    (its number in the epoch's order). Datasets seed their random draws from these; the list
    travels to loader workers as it is (it pickles with its attributes). ``part``: which
    rank's shard of the batch it is in a distributed run (0 otherwise)."""

    def __init__(self, indexes: list[int], epoch: int, position: int, part: int = 0) -> None:
        super().__init__(indexes)
        self.epoch, self.position, self.part = epoch, position, part


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one batch's random draws: a hash of (seed, epoch, position), so that nearby
    batches get unrelated streams."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator and Python's ``random`` seeded by ``seed``, and put
    both back afterwards: the draws inside are a pure function of ``seed``, and the process's
    own streams (dropout, ...) do not move. torchvision's v2 transforms, MixUp and CutMix draw
    from these two."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square, then resize to ``size`` (antialiased, as PIL would)."""
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def square_image(image: np.ndarray, size: int) -> np.ndarray:
    """One decoded image of any size, (H, W) or (H, W, 3) ``uint8``, as a ``size``×``size``×3
    ``uint8`` image: centre-cropped, resized (antialiased) and rounded. Image files and the
    uploads of ``graft serve`` go through this, so both reach the model as the same pixels."""
    img = torch.from_numpy(image)
    img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    img = _resize_square(img.unsqueeze(0).float(), size)[0]
    return img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def images_to_tensor(
    images: list[np.ndarray] | np.ndarray,
    prep: ImagePreprocess,
    augment: ImageTransform | None = None,
) -> torch.Tensor:
    """uint8 images (H, W) or (H, W, C) of one size → a normalised float batch (B, 3, S, S),
    each image augmented on its own if ``augment`` is given."""
    x = torch.from_numpy(
        np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images)
    )
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    if x.shape[1] == 1 and prep.channels == 3:
        x = x.expand(-1, 3, -1, -1)  # grayscale → 3 channels for ImageNet backbones
    x = _resize_square(x, prep.image_size)
    if augment is not None:
        x = apply_per_image(x, augment)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return (x - mean) / std


class ImageBatches(torch.utils.data.Dataset[Batch]):
    """Image examples (in memory or as files) served a whole batch at a time."""

    def __init__(
        self,
        examples: Examples,
        targets: np.ndarray | None,
        prep: ImagePreprocess,
        channels_last: bool,
        augment: ImageTransform | None = None,
        mix: BatchMix | None = None,
        seed: int = 0,
    ) -> None:
        self.examples = examples
        self.inputs = examples.inputs
        self.targets = targets
        self.prep = prep
        self.channels_last = channels_last
        self.augment, self.mix = augment, mix
        self.seed = seed
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def fingerprint(self) -> str:
        """A hash of what this dataset serves: the pixels (or image files' bytes), the targets,
        the preprocessing, the memory format and any augmentation with its seed. Computed once
        per dataset: image files are read once, not once per phase."""
        if self._fingerprint is None:
            h = _digest(self.targets)
            hash_examples(h, self.examples, labels=False)
            random_part = (repr(self.augment), repr(self.mix), self.seed) if self.random else None
            h.update(repr((self.prep.to_dict(), self.channels_last, random_part)).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def random(self) -> bool:
        """Whether batches are augmented at random (then no feature cache applies)."""
        return self.augment is not None or self.mix is not None

    def _load(self, index: list[int]) -> list[np.ndarray] | np.ndarray:
        if isinstance(self.inputs, np.ndarray):
            return self.inputs[index]
        from graft.data.images import load_image

        # Files differ in size: bring each to a square of the target size first.
        return [
            square_image(load_image(self.inputs[i]), self.prep.image_size)  # type: ignore[arg-type]
            for i in index
        ]

    def __getitems__(self, index: list[int]) -> Batch:
        context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.random and isinstance(index, BatchIndex):
            # Each rank's shard of a batch draws its own augmentations (part 0: one process).
            seed = self.seed if not index.part else self.seed * 65_537 + index.part
            context = seeded(batch_seed(seed, index.epoch, index.position))
        with context:
            x = images_to_tensor(self._load(index), self.prep, self.augment)
            y = None if self.targets is None else torch.from_numpy(self.targets[index])
            if self.mix is not None and y is not None:
                x, y = self.mix(x, y)  # y becomes class probabilities
        x = (
            x.contiguous(memory_format=torch.channels_last)
            if self.channels_last
            else x.contiguous()
        )
        return {"inputs": {"pixel_values": x}, "targets": y}

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


class TextBatches(torch.utils.data.Dataset[Batch]):
    """Texts tokenised once; each batch padded to its own longest sequence."""

    def __init__(
        self, examples: Examples, targets: np.ndarray | None, tokenizer: Any, prep: TextPreprocess
    ) -> None:
        encoded = tokenizer(list(examples.inputs), truncation=True, max_length=prep.max_length)
        self.ids: list[list[int]] = encoded["input_ids"]
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.targets = targets
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(t) for t in self.ids), dtype=np.int64, count=len(self.ids))

    def fingerprint(self) -> str:
        """A hash of what this dataset serves: every token id sequence (so the text, the
        tokenizer and max_length), the padding id and the targets; computed once."""
        if self._fingerprint is None:
            h = _digest(self.targets)
            h.update(f"pad {self.pad_id}".encode())
            for seq in self.ids:
                h.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getitems__(self, index: list[int]) -> Batch:
        seqs = [self.ids[i] for i in index]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        y = None if self.targets is None else torch.from_numpy(self.targets[index])
        return {"inputs": {"input_ids": ids, "attention_mask": mask}, "targets": y}

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


class EpochBatches(Sampler[list[int]]):
    """Batches of indexes, shuffled by a permutation that depends only on (seed, epoch).

    Iteration starts at batch ``start`` of the epoch (a run resumed mid-epoch): the batches
    before it are neither loaded nor yielded, and ``len`` stays the whole epoch's.

    With ``lengths`` (text), batches group examples of similar length so that padding to each
    batch's longest sequence wastes little: when shuffling, the permutation is cut into chunks of
    ``BUCKET_BATCHES`` batches, each chunk sorted by length and cut into batches, and the batches
    are shuffled; without shuffling, everything is sorted by length (for evaluation).
    """

    BUCKET_BATCHES = 50

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        lengths: np.ndarray | None = None,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.lengths = lengths
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve ``epoch``'s batches from its batch number ``start`` on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        return [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        for position, indexes in enumerate(self._batches()):
            if position >= self.start:
                yield BatchIndex(indexes, self.epoch, position)

    def _batches(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = (
                np.arange(self.n)
                if self.lengths is None
                else np.argsort(self.lengths, kind="stable")
            )
            yield from self._cut(order)
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).numpy()
        if self.lengths is None:
            yield from self._cut(order)
            return
        chunk = self.batch_size * self.BUCKET_BATCHES
        batches: list[list[int]] = []
        for start in range(0, self.n, chunk):
            part = order[start : start + chunk]
            batches += self._cut(part[np.argsort(self.lengths[part], kind="stable")])
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]


def identity_collate(batch: Any) -> Any:
    """Batches are made whole by ``__getitems__``: nothing left to collate."""
    return batch


def batches_once(
    loader: DataLoader[Batch], device: torch.device, positions: range | None = None
) -> Iterator[tuple[list[int], Batch]]:
    """Every example of ``loader``'s dataset once, as (indexes, batch on ``device``), in a fixed
    order (texts sorted by length: little padding), in the loader's batch size. For computing a
    cache: an evaluation loader (not shuffled) gets its own batches exactly. ``positions``: only
    these batches of that order (a distributed rank's part of the pass)."""
    sampler = loader.batch_sampler
    assert isinstance(sampler, EpochBatches)
    data: Any = loader.dataset
    once = EpochBatches(sampler.n, sampler.batch_size, False, lengths=sampler.lengths)
    wanted = set(positions if positions is not None else range(len(once)))
    for position, index in enumerate(once):
        if position in wanted:
            yield index, to_device(data.__getitems__(index), device)


def same_batches(
    data: torch.utils.data.Dataset[Batch], loader: DataLoader[Batch], *, workers: bool = False
) -> DataLoader[Batch]:
    """A loader over ``data`` (e.g. cached activations) that yields exactly ``loader``'s batches:
    the same sampler object, so the same per-epoch shuffle. ``workers``: in ``loader``'s worker
    processes too, for a dataset that wraps ``loader``'s own and so loads like it (a cache is
    in memory already: workers would only copy it)."""
    processes: dict[str, Any] = (
        {"num_workers": loader.num_workers, "worker_init_fn": loader.worker_init_fn}
        if workers
        else {}
    )
    return DataLoader(
        data,
        batch_sampler=loader.batch_sampler,
        collate_fn=identity_collate,
        generator=_private_generator(),
        **processes,
    )


def with_sampler(loader: DataLoader[Batch], sampler: EpochBatches) -> DataLoader[Batch]:
    """``loader`` (its dataset, workers and settings) with other batches."""
    return DataLoader(
        loader.dataset,
        batch_sampler=sampler,
        collate_fn=identity_collate,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        generator=_private_generator(),
    )


def _private_generator() -> torch.Generator:
    """For the seed a DataLoader draws each time it starts an iteration: drawn from the process's
    generator, it would shift the dropout stream by one draw per iteration, and a run resumed
    mid-epoch would start one iteration more than the run it continues."""
    return torch.Generator().manual_seed(0)


def _worker_init(_worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group, a
    container stop every process): the main process finishes its step, checkpoints and ends
    them; killed on their own, they would fail that step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class Loaders:
    """How batches are made for one run: its preprocessing and loader settings."""

    prep: ImagePreprocess | TextPreprocess
    tokenizer: Any
    channels_last: bool
    num_workers: int
    seed: int
    augment: ImageTransform | None = None  # training batches only
    mix: BatchMix | None = None  # training batches only

    @property
    def random(self) -> bool:
        """Whether training batches are augmented at random (then no feature cache)."""
        return self.augment is not None or self.mix is not None

    def dataset(
        self, examples: Examples, targets: np.ndarray | None, train: bool = False
    ) -> torch.utils.data.Dataset[Batch]:
        if isinstance(self.prep, TextPreprocess):
            return TextBatches(examples, targets, self.tokenizer, self.prep)
        if train:
            return ImageBatches(
                examples, targets, self.prep, self.channels_last, self.augment, self.mix, self.seed
            )
        return ImageBatches(examples, targets, self.prep, self.channels_last)

    def loader(
        self,
        examples: Examples,
        targets: np.ndarray | None,
        batch_size: int,
        shuffle: bool,
        by_length: bool = False,
        train: bool = False,
    ) -> DataLoader[Batch]:
        """Batches of ``examples``; ``by_length`` groups texts of similar length (the output order
        then differs from the input order: use it only where targets travel with the batches);
        ``train`` applies the augmentation."""
        data = self.dataset(examples, targets, train)
        lengths = data.lengths() if by_length and isinstance(data, TextBatches) else None
        sampler = EpochBatches(len(examples), batch_size, shuffle, self.seed, lengths)
        return DataLoader(
            data,
            batch_sampler=sampler,
            collate_fn=identity_collate,
            num_workers=self.num_workers,
            persistent_workers=False,
            generator=_private_generator(),
            worker_init_fn=_worker_init if self.num_workers else None,
        )


def set_epoch(loader: DataLoader[Batch], epoch: int, start: int = 0) -> None:
    """Serve ``epoch``'s batches from batch ``start`` on (see :class:`EpochBatches`)."""
    sampler = loader.batch_sampler
    if isinstance(sampler, EpochBatches):
        sampler.set_epoch(epoch, start)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device``: its model inputs, its targets and any other tensor it carries
    (a distillation batch's ``teacher`` logits)."""
    if device.type == "cpu":
        return batch
    moved: Batch = {
        k: None if v is None else v.to(device) for k, v in batch.items() if k != "inputs"
    }
    moved["inputs"] = {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()}
    return moved
