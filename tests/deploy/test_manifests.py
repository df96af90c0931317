"""deploy/k8s rendered offline and checked object by object: every object valid for its kind
(core kinds against Kubernetes KUBERNETES_VERSION, the operators' kinds against the schemas
in tests/deploy/schemas), then the properties the service relies on."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.core.metrics import REGISTRY
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    InvalidManifest,
    Manifest,
    pod_of,
    render,
    storage_classes,
    validate,
)

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Labels the operator puts on the pods it makes (CloudNativePG 1.27).
CNPG_POD_LABELS = {
    "Cluster": lambda doc: {"cnpg.io/cluster": doc["metadata"]["name"]},
    "Pooler": lambda doc: {"cnpg.io/poolerName": doc["metadata"]["name"]},
}


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def workloads(docs: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """Deployments and Jobs with their pod templates."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]


def pod_labels(docs: list[Manifest]) -> list[dict[str, str]]:
    """The labels of every pod the overlay makes, the operators' included."""
    labels = [template["metadata"]["labels"] for _, template in workloads(docs)]
    labels += [CNPG_POD_LABELS[d["kind"]](d) for d in docs if d["kind"] in CNPG_POD_LABELS]
    return labels


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(request.param)


# --- every object valid ------------------------------------------------------------------


def test_every_rendered_object_is_valid(overlay: tuple[str, list[Manifest]]) -> None:
    name, docs = overlay
    assert len(docs) >= 19, name
    for doc in docs:
        validate(doc)
        if doc["kind"] == "Pooler":  # its pod template against the core Pod schema
            validate(pod_of(doc["spec"]["template"]["spec"], doc["metadata"]["name"]))


def test_storage_classes_are_valid_and_encrypted() -> None:
    classes = storage_classes()
    assert {c["provisioner"] for c in classes} == {"ebs.csi.aws.com", "pd.csi.storage.gke.io"}
    for doc in classes:
        validate(doc)
        params = doc["parameters"]
        assert params.get("encrypted") == "true" or "disk-encryption-kms-key" in params
        assert doc["metadata"]["name"] == "couponflash-encrypted"


def test_the_checker_refuses_unknown_kinds_and_fields() -> None:
    docs = render("production")
    with pytest.raises(InvalidManifest, match="Couldn't find schema"):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(InvalidManifest, match="no schema"):
        validate({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Database", "metadata": {}})
    cluster = copy.deepcopy(one(docs, "Cluster"))
    cluster["spec"]["postgresql"]["synchronous"]["dataDurabilty"] = "required"
    with pytest.raises(InvalidManifest, match="dataDurabilty"):
        validate(cluster)
    deployment = copy.deepcopy(one(docs, "Deployment", "couponflash-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(InvalidManifest, match="readinesProbe"):
        validate(deployment)


# --- workloads ------------------------------------------------------------------------


def test_pods_run_hardened_with_resources_and_the_released_image(
    overlay: tuple[str, list[Manifest]],
) -> None:
    _, docs = overlay
    seen = set()
    for doc, template in workloads(docs):
        spec = template["spec"]
        seen.add(doc["metadata"]["name"])
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "couponflash"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert {"cpu", "memory"} <= set(resources["limits"])
            image, _, tag = container["image"].rpartition(":")
            assert image and tag == VERSION, container["image"]
            # Writable places are volumes: the data directory and /tmp.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts
    assert {"couponflash-api", "couponflash-worker"} <= seen
    account = one(docs, "ServiceAccount", "couponflash")
    assert account["automountServiceAccountToken"] is False


def test_api_probes_drain_and_rolls_without_losing_capacity(
    overlay: tuple[str, list[Manifest]],
) -> None:
    _, docs = overlay
    api = one(docs, "Deployment", "couponflash-api")
    assert "replicas" not in api["spec"]  # the autoscaler owns it
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = api["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and int(pause[1]) >= 5
    # The pause, then uvicorn's graceful shutdown (app/cli.py: 20 s), must fit the grace.
    assert spec["terminationGracePeriodSeconds"] >= int(pause[1]) + 20
    assert container["command"] == ["python", "-m", "app", "serve"]

    worker = one(docs, "Deployment", "couponflash-worker")
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (wc,) = worker["spec"]["template"]["spec"]["containers"]
    assert wc["command"][:4] == ["python", "-m", "app", "worker"]
    port = wc["command"][wc["command"].index("--metrics-port") + 1]
    assert wc["ports"][0]["containerPort"] == int(port)
    assert wc["livenessProbe"]["httpGet"]["port"] == "metrics"
    # Running jobs get WORKER_SHUTDOWN_GRACE_SECONDS (10 s) and a webhook request's timeout.
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 20


def test_no_secret_values_in_the_repository(overlay: tuple[str, list[Manifest]]) -> None:
    _, docs = overlay
    assert not [d for d in docs if d["kind"] == "Secret"]
    config = one(docs, "ConfigMap", "couponflash")["data"]
    assert not [k for k in config if any(w in k for w in ("SECRET", "PASSWORD", "TOKEN"))]
    for _, template in workloads(docs):
        for container in template["spec"]["containers"]:
            env = env_of(container)
            assert "secretKeyRef" in env["JWT_SECRET"]["valueFrom"]
            assert "secretKeyRef" in env["DB_PASSWORD"]["valueFrom"]
            for item in env.values():
                value = item.get("value", "")
                if value.startswith("postgresql://"):
                    assert urlsplit(value).password == "$(DB_PASSWORD)", value


def test_migrations_run_once_per_release_on_a_direct_connection(
    overlay: tuple[str, list[Manifest]],
) -> None:
    _, docs = overlay
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == [
        f"couponflash-migrate-{VERSION.replace('.', '-')}"
    ]
    (container,) = jobs[0]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "app", "migrate"]
    assert urlsplit(env_of(container)["DATABASE_URL"]["value"]).hostname == "couponflash-db-rw"


# --- database ---------------------------------------------------------------------------


def test_api_goes_through_pgbouncer_and_listens_direct(overlay: tuple[str, list[Manifest]]) -> None:
    _, docs = overlay
    cluster = one(docs, "Cluster")["metadata"]["name"]
    pooler = one(docs, "Pooler")
    assert pooler["spec"]["cluster"]["name"] == cluster
    assert pooler["spec"]["type"] == "rw"
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    config = one(docs, "ConfigMap", "couponflash")["data"]
    assert config["DB_PGBOUNCER"] == "true"
    assert config["PGSSLMODE"] == "verify-full"
    (api,) = one(docs, "Deployment", "couponflash-api")["spec"]["template"]["spec"]["containers"]
    env = env_of(api)
    assert urlsplit(env["DATABASE_URL"]["value"]).hostname == pooler["metadata"]["name"]
    assert urlsplit(env["DATABASE_DIRECT_URL"]["value"]).hostname == f"{cluster}-rw"
    worker = one(docs, "Deployment", "couponflash-worker")["spec"]["template"]["spec"]
    wenv = env_of(worker["containers"][0])
    assert wenv["DB_PGBOUNCER"]["value"] == "false"
    for key in ("DATABASE_URL", "DATABASE_DIRECT_URL"):
        assert urlsplit(wenv[key]["value"]).hostname == f"{cluster}-rw"
    # The server certificate names the pooler's service too (sslmode=verify-full).
    names = one(docs, "Cluster")["spec"]["certificates"]["serverAltDNSNames"]
    assert pooler["metadata"]["name"] in names


def test_production_database_is_synchronous_backed_up_and_observed() -> None:
    docs = render("production")
    cluster = one(docs, "Cluster")
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"] == {
        "method": "any",
        "number": 1,
        "dataDurability": "required",
    }
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["affinity"]["topologyKey"] == "topology.kubernetes.io/zone"
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith(("s3://", "gs://"))
    assert "wal" in store
    assert any(k.startswith("pg_stat_statements.") for k in spec["postgresql"]["parameters"])
    assert spec["storage"]["storageClass"] == "couponflash-encrypted"
    assert spec["walStorage"]["storageClass"] == "couponflash-encrypted"
    backup = one(docs, "ScheduledBackup")
    assert backup["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert one(docs, "Pooler")["spec"]["instances"] >= 2
    # Pool sizes fit: every PgBouncer's server pool plus the direct sessions (each API
    # process's LISTEN, the worker pods' pools) stay under max_connections, at the most pods.
    pooler = one(docs, "Pooler")
    bouncer = pooler["spec"]["pgbouncer"]["parameters"]
    server = pooler["spec"]["instances"] * int(bouncer["default_pool_size"])
    config = one(docs, "ConfigMap", "couponflash")["data"]
    processes = one(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] * int(config["WORKERS"])
    worker = one(docs, "Deployment", "couponflash-worker")
    direct = processes + worker["spec"]["replicas"] * (8 + 5 + 5 + 2) + 1
    assert server + direct + 10 < int(spec["postgresql"]["parameters"]["max_connections"])
    # Every API process's pools to PgBouncer: within one instance's client limit even if the
    # Service sent them all to the same one.
    pools = sum(int(config[k]) for k in ("DB_POOL_SIZE", "DB_ORM_POOL_SIZE", "DB_MAX_OVERFLOW"))
    assert processes * pools <= int(bouncer["max_client_conn"])


# docs/deploy.md#capacity: what we plan with per API process (one core), and the load the
# platform names.
PLANNED_PER_PROCESS = 500  # requests/s: half of what `make bench` measured per core
CPU_TARGET = 0.70
TARGET_PER_S = 1_000_000 / 60


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_production_reaches_a_million_requests_a_minute_within_its_pods() -> None:
    docs = render("production")
    processes = int(one(docs, "ConfigMap", "couponflash")["data"]["WORKERS"])
    (api,) = one(docs, "Deployment", "couponflash-api")["spec"]["template"]["spec"]["containers"]
    # One process per requested core: the CPU target is a share of what the processes can use.
    assert cores(api["resources"]["requests"]["cpu"]) == processes
    assert cores(api["resources"]["limits"]["cpu"]) > processes
    hpa = one(docs, "HorizontalPodAutoscaler", "couponflash-api")["spec"]
    per_pod = processes * PLANNED_PER_PROCESS * CPU_TARGET
    assert hpa["maxReplicas"] * per_pod >= TARGET_PER_S
    # The in-flight target scales with the processes: 16 per process.
    (pods,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert int(pods["target"]["averageValue"]) == 16 * processes


# --- availability and scaling ----------------------------------------------------------


def test_disruption_budgets_cover_the_workloads(overlay: tuple[str, list[Manifest]]) -> None:
    _, docs = overlay
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for name in ("couponflash-api", "couponflash-worker"):
        labels = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert [b for b in budgets if matches(b["spec"]["selector"], labels)], name


def test_autoscaler_on_cpu_and_requests_in_flight(overlay: tuple[str, list[Manifest]]) -> None:
    name, docs = overlay
    hpa = one(docs, "HorizontalPodAutoscaler", "couponflash-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "couponflash-api"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["averageUtilization"] == 70
    pods = metrics["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    if name == "production":
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    # The adapter's rule serves this metric, made from a gauge the service exports.
    adapter = yaml.safe_load(
        (ROOT / "deploy" / "monitoring" / "prometheus-adapter.yaml").read_text()
    )
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    source = rule["seriesQuery"].split("{")[0]
    assert source in {m.name for m in REGISTRY.collect()}
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


# --- network --------------------------------------------------------------------------


def test_network_policies_select_real_pods_and_fence_the_database(
    overlay: tuple[str, list[Manifest]],
) -> None:
    _, docs = overlay
    labels = pod_labels(docs)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    for name, policy in policies.items():
        selector = policy["spec"]["podSelector"]
        if selector:
            assert [pod for pod in labels if matches(selector, pod)], f"{name} selects no pod"
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert [p for p in labels if matches(peer["podSelector"], p)], (name, peer)

    def allowed_pods(policy: str, port: int) -> list[dict[str, str]]:
        """Pods of this namespace that may reach `port` of the policy's pods."""
        found = []
        for rule in policies[policy]["spec"]["ingress"]:
            if port not in [p["port"] for p in rule["ports"]]:
                continue
            for peer in rule["from"]:
                if "namespaceSelector" not in peer:
                    found += [p for p in labels if matches(peer["podSelector"], p)]
        return found

    def component(pod: dict[str, str]) -> str:
        return pod.get("app.kubernetes.io/component") or next(iter(pod))

    # PostgreSQL: the API, the worker, the migrations, PgBouncer and its own instances.
    assert {component(p) for p in allowed_pods("couponflash-db", 5432)} == {
        "api",
        "worker",
        "migrate",
        "cnpg.io/poolerName",
        "cnpg.io/cluster",
    }
    # PgBouncer: the API only.
    assert {component(p) for p in allowed_pods("couponflash-db-pooler", 5432)} == {"api"}
    # The API: nothing in the namespace; the ingress controller and Prometheus from theirs.
    api_rules = policies["couponflash-api"]["spec"]["ingress"]
    assert allowed_pods("couponflash-api", 8000) == []
    namespaces = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in api_rules
        for peer in rule["from"]
    }
    assert namespaces == {"ingress-nginx", "monitoring"}


def test_service_ingress_and_scrape_targets_line_up(overlay: tuple[str, list[Manifest]]) -> None:
    _, docs = overlay
    api = one(docs, "Deployment", "couponflash-api")["spec"]["template"]
    service = one(docs, "Service", "couponflash-api")
    assert matches({"matchLabels": service["spec"]["selector"]}, api["metadata"]["labels"])
    port_names = {p["name"] for p in api["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    ingress = one(docs, "Ingress", "couponflash")
    (rule,) = ingress["spec"]["rules"]
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    assert ingress["spec"]["tls"][0]["secretName"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "couponflash-api"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    monitor = one(docs, "ServiceMonitor")
    services = [
        d
        for d in docs
        if d["kind"] == "Service" and matches(monitor["spec"]["selector"], d["metadata"]["labels"])
    ]
    offered = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= offered
    assert len(services) == 2


def test_the_overlays_are_the_only_entry_points() -> None:
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS)
