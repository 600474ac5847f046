"""The environment is the one the lock describes, and the declared lower bounds admit it."""

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


@pytest.mark.skipif(os.environ.get("TEXTDISTILL_UNLOCKED") == "1", reason="make test-latest runs unlocked")
def test_every_installed_package_of_the_lock_has_its_locked_version():
    pins = locked()
    wrong = []
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (locked {version})")
            continue
        if Version(installed).public != Version(version).public:  # torch's "+cpu" is the same release
            wrong.append(f"{name}: {installed} installed, {version} locked")
    assert not wrong, "run `make setup` (the lock changed) or `make lock`:\n" + "\n".join(wrong)


def test_the_lock_pins_every_dependency_and_satisfies_the_declared_ranges():
    pins = locked()
    requires = [Requirement(r) for r in metadata.requires("textdistill") or []]
    for req in requires:
        extra = req.marker is not None and "extra" in str(req.marker)
        if extra and 'extra == "test"' not in str(req.marker):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is a dependency but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req}"
