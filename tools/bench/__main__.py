"""``python -m tools.bench``: see :mod:`tools.bench.cli`."""

from .cli import app

app()
