"""The pinned CI environment (``.ci/constraints.txt``) is complete, consistent with ``pyproject.toml`` and used.

* every dependency ``pyproject.toml`` names (the package and the extras CI installs, plus ``bench``) has an exact
  pin, and the pin satisfies the range ``pyproject.toml`` allows (a raised floor without refreshed pins fails here);
* every ``pip install`` of ``.ci/run``'s main venv goes through the pins (the floor step's venv has its own);
* under ``CI=true`` the running environment is the pinned one (what ``tests/test_golden.py``'s hashes need).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from pins import CONSTRAINTS, installed_version, normalize, pinned_python, pinned_versions

ROOT = Path(__file__).resolve().parents[1]
CI_EXTRAS = ("dev", "ray", "fast", "trl", "megatron")


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


@pytest.mark.parametrize("extras", [CI_EXTRAS, ("bench",)], ids=["ci", "bench"])
def test_every_dependency_is_pinned_within_its_range(extras):
    pins = pinned_versions()
    unpinned = sorted({r.name for r in _requirements(extras) if normalize(r.name) not in pins})
    assert unpinned == [], f"add exact pins for {unpinned} to {CONSTRAINTS.name} (docs/development.md)"
    outside = {
        r.name: (pins[normalize(r.name)], str(r.specifier))
        for r in _requirements(extras)
        if not r.specifier.contains(pins[normalize(r.name)], prereleases=True)
    }
    assert outside == {}, f"pins outside pyproject.toml's ranges: {outside}; refresh the pins (docs/development.md)"


def test_constraints_file_is_exact_pins_only():
    lines = [ln.split(" #")[0].strip() for ln in CONSTRAINTS.read_text().splitlines()]
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    assert entries and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^\s=<>!~,;]+", e) for e in entries), entries
    assert len({normalize(e.split("==")[0]) for e in entries}) == len(entries)  # one pin per package
    assert re.fullmatch(r"3\.\d+\.\d+", pinned_python())
    assert "hfprep" not in pinned_versions()  # the project itself is installed from the checkout


def test_ci_run_installs_the_main_venv_from_the_pins():
    script = (ROOT / ".ci" / "run").read_text()
    main_part = script[: script.index("# Floor step")]
    installs = [ln for ln in main_part.splitlines() if re.search(r"\bpip install\b", ln) and not ln.lstrip().startswith("#")]
    assert len(installs) >= 3, installs  # pip itself, torch, the package with its extras
    assert all('-c "$pins"' in ln for ln in installs), installs
    assert "pins=.ci/constraints.txt" in main_part
    assert any(f".[{','.join(CI_EXTRAS)}]" in ln for ln in installs)  # the extras whose pins the first test checks
    assert "export CI=true" in script


def test_ci_environment_is_the_pinned_one():
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("checked under CI=true, where .ci/run installed the pins")
    import platform

    pins = pinned_versions()
    wrong = {
        name: (installed_version(name), version)
        for name, version in pins.items()
        if installed_version(name) not in ("absent", version)
    }
    assert wrong == {}, f"installed vs pinned: {wrong}"
    assert platform.python_version() == pinned_python()
    missing = sorted(normalize(r.name) for r in _requirements(CI_EXTRAS) if installed_version(r.name) == "absent")
    assert missing == []
