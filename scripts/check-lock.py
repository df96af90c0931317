"""Prove that this environment holds exactly the locked versions and that the locks agree
with pyproject.toml; exits 1 naming every difference. `make lint` runs it with the venv's
interpreter, so CI checks it on every run.

Checked:
- every package installed here is pinned in requirements/dev.txt at the installed version,
  and every pin there is installed (the project itself and the venv's own pip, setuptools
  and wheel aside: they come with the interpreter, not from the lock);
- every pin in every lock carries at least one hash (pip --require-hashes and uv need them);
- runtime.txt (the image) pins the same versions as dev.txt (what the tests ran) and
  uv.txt the same uv;
- each requirement in pyproject.toml is locked at a version it allows, so a bound changed
  without `make lock` is caught here;
- clients.txt (the contract test's generator, in its own venv) pins, with hashes, a version
  each requirement of clients.in allows.
- requirements/ha.txt (the tools of `make test-ha`, in .venv-ha) pins with hashes what
  requirements/ha.in asks for, and .venv-ha, when it exists, holds exactly those pins.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
# Installed with the venv itself (python -m venv), never pinned by the lock; `uv pip sync`
# leaves them alone, and `pip freeze` does not list them either.
NOT_LOCKED = {"pip", "setuptools", "wheel"}
# The lock is for CPython 3.11 on Linux x86_64: pyproject markers are judged for it.
TARGET = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def read_lock(path: Path, problems: list[str]) -> dict[str, str]:
    """The `name==version` pins of a lock, by canonical name; a pin without a hash is a
    problem."""
    pins: dict[str, str] = {}
    # Join continuation lines so each requirement is one line with its hashes.
    text = path.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            problems.append(f"{path.name}: not a pinned requirement: {line[:80]}")
            continue
        name = canonicalize_name(match.group(1))
        pins[name] = match.group(2)
        if "--hash=" not in line:
            problems.append(f"{path.name}: {name}=={match.group(2)} has no hash")
    return pins


def installed(problems: list[str]) -> dict[str, str]:
    """Every distribution this interpreter can import from, by canonical name; one installed
    twice (a leftover metadata directory) is a problem."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in found and found[name] != dist.version:
            problems.append(
                f"{sys.prefix}: {name} is installed twice ({found[name]}, {dist.version})"
            )
        found[name] = dist.version
    return found


def compare(label: str, expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Every package missing, extra or at another version than the lock says."""
    problems = []
    for name in sorted(expected.keys() | actual.keys()):
        want, have = expected.get(name), actual.get(name)
        if want == have:
            continue
        if have is None:
            problems.append(f"{label}: {name}=={want} is locked but missing")
        elif want is None:
            problems.append(f"{label}: {name}=={have} is not in the lock")
        else:
            problems.append(f"{label}: {name} is {have}, the lock says {want}")
    return problems


def declared(pyproject: dict[str, object]) -> tuple[str, list[Requirement], list[Requirement]]:
    """The project's name, its runtime requirements and every extra's requirements."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    runtime = [Requirement(r) for r in project.get("dependencies", [])]
    extras = [
        Requirement(r) for group in project.get("optional-dependencies", {}).values() for r in group
    ]
    return canonicalize_name(project["name"]), runtime, extras


def same_pins(label: str, subset: dict[str, str], dev: dict[str, str]) -> list[str]:
    """A lock that must pin the versions dev.txt pins (the ones the tests ran)."""
    return [
        f"{label} pins {name}=={version}, dev.txt {dev.get(name, 'nothing')}"
        for name, version in sorted(subset.items())
        if dev.get(name) != version
    ]


def unsatisfied(
    label: str, wanted: list[Requirement], pins: dict[str, str], source: str = "pyproject.toml"
) -> list[str]:
    """Every requirement of pyproject.toml the lock leaves out or pins outside its bounds."""
    problems = []
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(req.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{label}: {source} asks for {req}, the lock has no {name}")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{label}: {source} asks for {req}, the lock has {pin}")
    return problems


def clients_in() -> list[Requirement]:
    """The requirements clients.txt is compiled from."""
    lines = (LOCKS / "clients.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


HA_VENV = ROOT / ".venv-ha"


def check_ha(problems: list[str]) -> list[str]:
    """The separate lock of `make test-ha` against its input and its venv."""
    pins = read_lock(LOCKS / "ha.txt", problems)
    wanted = [
        Requirement(line.split("#", 1)[0].strip())
        for line in (LOCKS / "ha.in").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    found = unsatisfied("ha.txt", wanted, pins, "requirements/ha.in")
    for site in sorted(HA_VENV.glob("lib/python*/site-packages")):
        here: dict[str, str] = {}
        for dist in metadata.distributions(path=[str(site)]):
            here[canonicalize_name(dist.metadata["Name"] or "")] = dist.version
        here = {n: v for n, v in here.items() if n not in NOT_LOCKED}
        found += compare(str(HA_VENV), pins, here)
    return found


def main() -> int:
    problems: list[str] = []
    dev = read_lock(LOCKS / "dev.txt", problems)
    runtime = read_lock(LOCKS / "runtime.txt", problems)
    tool = read_lock(LOCKS / "uv.txt", problems)
    clients = read_lock(LOCKS / "clients.txt", problems)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, runtime_reqs, extra_reqs = declared(pyproject)
    problems += unsatisfied("dev.txt", runtime_reqs + extra_reqs, dev)
    problems += unsatisfied("runtime.txt", runtime_reqs, runtime)
    problems += same_pins("runtime.txt", runtime, dev)
    problems += same_pins("uv.txt", tool, dev)
    problems += unsatisfied("clients.txt", clients_in(), clients)

    problems += check_ha(problems)

    here = installed(problems)
    if project not in here:
        problems.append(f"{sys.prefix}: {project} itself is not installed")
    here = {n: v for n, v in here.items() if n not in NOT_LOCKED and n != project}
    problems += compare(sys.prefix, dev, here)

    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} difference(s) between the environment, the locks and "
            "pyproject.toml. `touch requirements/dev.txt && make install` puts the venv back "
            "to the lock; after a change to pyproject.toml, `make lock` refreshes the locks",
            file=sys.stderr,
        )
        return 1
    print(f"environment matches requirements/dev.txt ({len(dev)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
