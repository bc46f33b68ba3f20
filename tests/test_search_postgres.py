"""``graft search`` on a real PostgreSQL server: two worker processes share one study, and a
second invocation joins it, as workers on other machines would.

The fixture runs Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``): ``initdb`` into
a temporary directory, ``pg_ctl start`` on a free loopback port, ``createdb``; it stops the server
afterwards. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
user (or ``nobody``). Without PostgreSQL the tests skip, except on CI (``CI=true``) where they
fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_search import CALLS_FILE, SLEEP, call_lines, fake_fit, search_file

from graft.search import search

pytestmark = pytest.mark.integration


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], str | None]:
    """The command prefix that drops root privileges, and the user it runs as."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"], user
    pytest.skip("running as root with neither a postgres nor a nobody user")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    prefix, user = _as_user()
    root = Path(tempfile.mkdtemp(prefix="graft-pg-"))
    if user is not None:
        shutil.chown(root, user)
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, cwd=root)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "graft", "--auth=trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        options,
        "start",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "graft", "graft")
        yield f"postgresql://graft@127.0.0.1:{port}/graft"  # the README's form: any driver
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            cwd=root,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv(CALLS_FILE, str(calls))
    monkeypatch.setenv(SLEEP, "0.1")
    path = search_file(tmp_path, "pg", n_trials=6, pruner="none")
    result = search(path, storage=postgres_url, workers=2, fit_fn=fake_fit, quiet=True)
    assert result.summary["storage"] == postgres_url  # no password to hide here
    complete = [t for t in result.summary["trials"] if t["state"] == "COMPLETE"]
    assert len({t["number"] for t in complete}) == len(complete) == 6
    assert len({t["worker"].rsplit("/", 1)[1] for t in complete}) == 2
    assert not (result.search_dir / "study.db").exists()  # the study is in PostgreSQL
    # Another machine joins the same study with a larger budget: it adds the difference.
    other = tmp_path / "other-machine"
    other.mkdir()
    monkeypatch.chdir(other)
    result = search(path, storage=postgres_url, join=True, n_trials=8, fit_fn=fake_fit, quiet=True)
    assert result.summary["states"] == {"COMPLETE": 8}
    assert len(call_lines(calls)) == 8
