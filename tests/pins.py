"""The pinned CI environment, read from ``.ci/constraints.txt`` (the one place its versions are written).

``.ci/run`` installs with ``-c .ci/constraints.txt``; ``tests/test_golden.py`` takes the versions its hashes need
from here; ``tests/test_ci_pins.py`` checks the file against ``pyproject.toml`` and ``.ci/run``.

Example:
    >>> pinned_versions("flask==3.0.0  # a comment\\n# python: 3.11.7\\n")
    {'flask': '3.0.0'}
    >>> pinned_python("# python: 3.11.7   (why)\\n")
    '3.11.7'
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / ".ci" / "constraints.txt"
PYTHON_LINE = re.compile(r"^#\s*python:\s*(\S+)", re.M)
PIN_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Jinja2`` == ``jinja2``, ``awkward_cpp`` == ``awkward-cpp``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(text: str | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line."""
    text = CONSTRAINTS.read_text() if text is None else text
    out = {}
    for line in text.splitlines():
        m = PIN_LINE.match(line.strip())
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def pinned_python(text: str | None = None) -> str:
    """The interpreter version the pins were made with (pip cannot pin it; a ``# python: X.Y.Z`` line records it)."""
    text = CONSTRAINTS.read_text() if text is None else text
    m = PYTHON_LINE.search(text)
    if m is None:
        raise ValueError(f"{CONSTRAINTS.name} has no '# python: X.Y.Z' line")
    return m.group(1)


def installed_version(dist: str) -> str:
    """The installed version of ``dist`` without a local label (``2.13.0+cpu`` -> ``2.13.0``), or ``absent``."""
    try:
        return version(dist).split("+")[0]
    except PackageNotFoundError:
        return "absent"
