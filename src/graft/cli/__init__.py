"""The ``graft`` command: one module per command, each adding its own parser and handler.

A command module parses arguments and calls library functions; it holds no logic a Python user
would need. Exit codes: see :mod:`graft.cli.app`.
"""

from graft.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
