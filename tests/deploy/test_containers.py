"""The Dockerfile and docker-compose.yml, checked without a Docker engine: Compose's own
schema, and the image's commands against the Makefile's and the manifests'."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from app.api.health import router as health_router
from tests.deploy.manifests import ROOT, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def exec_form(args: str) -> list[str]:
    parsed: list[str] = json.loads(args)
    return parsed


def test_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("check-jsonschema")),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_installs_the_runtime_lock_hash_checked_on_the_locked_python() -> None:
    steps = instructions()
    froms = [args.split()[0] for word, args in steps if word == "FROM"]
    locked = re.search(r"--python-version (\S+)", MAKEFILE)
    assert locked
    assert froms and all(image.startswith(f"python:{locked.group(1)}-") for image in froms)
    runs = [args for word, args in steps if word == "RUN"]
    assert any("--require-hashes -r requirements/runtime.txt" in run for run in runs)
    assert "requirements/runtime.txt" in MAKEFILE.split("LOCKS :=")[1].splitlines()[0]
    # The service itself adds nothing the lock does not list.
    assert any(re.search(r"pip install --no-deps \.$", run) for run in runs)


def test_image_runs_what_make_run_runs_as_a_non_root_user() -> None:
    steps = instructions()
    (cmd,) = [exec_form(args) for word, args in steps if word == "CMD"]
    run_target = re.search(r"^run:.*\n\t(.+)$", MAKEFILE, re.MULTILINE)
    assert run_target
    assert cmd[1:] == shlex.split(run_target.group(1))[1:]  # `$(PY) -m app serve`
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"--uid (\d+)", DOCKERFILE).group(1) != "0"  # type: ignore[union-attr]
    # Kubernetes runs the same command as that user.
    docs = render("production")
    api = next(
        d for d in docs if d["metadata"]["name"] == "couponflash-api" and d["kind"] == "Deployment"
    )
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["command"] == cmd
    uid = re.search(r"--uid (\d+)", DOCKERFILE)
    assert uid and api["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
        uid.group(1)
    )


def test_healthcheck_asks_a_real_route_on_the_exposed_port() -> None:
    steps = instructions()
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    (exposed,) = [args for word, args in steps if word == "EXPOSE"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert url and url.group(1) == exposed
    assert url.group(2) in {getattr(route, "path", None) for route in health_router.routes}
    env = re.search(r"PORT=(\d+)", DOCKERFILE)
    assert env and env.group(1) == exposed


def test_compose_runs_the_same_commands_as_kubernetes() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "api", "worker", "prometheus"}
    docs = render("production")
    worker = next(
        d
        for d in docs
        if d["metadata"]["name"] == "couponflash-worker" and d["kind"] == "Deployment"
    )
    assert (
        services["worker"]["command"]
        == worker["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    assert services["api"]["environment"]["RUN_WORKER"] == "false"
    # Prometheus scrapes both, under the job names the rules select, and loads the rules.
    prometheus = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"couponflash-api", "couponflash-worker-metrics"}
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/monitoring/rules.yaml:") for m in mounts)
    assert prometheus["rule_files"] == ["rules.yaml"]
