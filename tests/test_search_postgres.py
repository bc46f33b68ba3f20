"""``graft search`` on a real PostgreSQL server: two worker processes share one study, and a
second invocation joins it, as workers on other machines would.

The fixture (``postgres_url`` in conftest.py, shared with test_compare_workers.py) runs Debian's
``postgresql`` binaries (``/usr/lib/postgresql/*/bin``): ``initdb`` into
a temporary directory, ``pg_ctl start`` on a free loopback port, ``createdb``; it stops the server
afterwards. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
user (or ``nobody``). Without PostgreSQL the tests skip, except on CI (``CI=true``) where they
fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_search import CALLS_FILE, SLEEP, call_lines, fake_fit, search_file

from graft.search import search

pytestmark = pytest.mark.integration


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
