"""The Kubernetes objects of the documentation (docs/deployment.md's Deployment), which platform
engineers copy as they are: the API server must accept them (its schema, strictly: a misspelled
or unknown field fails), and they must agree with the service and the image they run: the probes
on routes it serves, its ports, the user the image runs as, a writable volume under every path
it writes, and only settings that exist."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from bentoml._internal.container.generate import BENTO_UID_GID

from service.drift.monitor import STOP_TIMEOUT_SECONDS as DRIFT_STOP_TIMEOUT_SECONDS
from service.predlog.store import parse_url
from service.predlog.writer import CLOSE_MARGIN_SECONDS
from service.settings import SHUTDOWN_FORMULA, Settings
from tests.support import ROOT

# A recent Kubernetes release whose schema kubernetes-validate ships (it bundles the JSON
# schemas, so the check runs offline); raise it with the package.
KUBERNETES_VERSION = "1.37"
DEPLOYMENT_DOC = "docs/deployment.md"
# Variables a manifest may set that are not the service's settings: BentoML's own (the image's
# entrypoint maps PORT to BENTOML_PORT) and OpenTelemetry's `OTEL_*` (README, Configuration).
OTHER_VARIABLES = {"BENTOML_DO_NOT_TRACK", "BENTOML_CONFIG", "BENTOML_PORT", "PORT"}
OTEL_VARIABLE = re.compile(r"OTEL_[A-Z0-9_]+")
# What a container port's name must be (Kubernetes' IANA_SVC_NAME), which a probe may refer to;
# the JSON schema does not say it.
PORT_NAME = re.compile(r"(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*")


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```ya?ml\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def kubernetes_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(doc, object)`` for every YAML document of the docs with an apiVersion and a kind."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in yaml_blocks(path.read_text()):
            for document in yaml.safe_load_all(block):
                if isinstance(document, dict) and {"apiVersion", "kind"} <= document.keys():
                    yield str(path.relative_to(ROOT)), document


OBJECTS = list(kubernetes_objects())


def the_deployment() -> dict[str, Any]:
    found = [obj for doc, obj in OBJECTS if doc == DEPLOYMENT_DOC and obj["kind"] == "Deployment"]
    assert len(found) == 1, f"{DEPLOYMENT_DOC} should hold one Deployment, not {len(found)}"
    return found[0]


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the service's pod runs one container"
    return containers[0]


def schema_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(step) for step in error.path)
        return f"{where}: {error.message}"
    return None


@pytest.mark.parametrize(
    ("doc", "obj"), OBJECTS, ids=[f"{doc}:{obj['kind']}" for doc, obj in OBJECTS]
)
def test_every_kubernetes_object_of_the_docs_passes_the_api_schema(
    doc: str, obj: dict[str, Any]
) -> None:
    assert schema_errors(obj) is None, f"{doc}: {obj['kind']}: {schema_errors(obj)}"


def test_the_schema_check_catches_a_misspelled_field() -> None:
    # Strictness is what makes the check worth having: a misspelled field is otherwise found
    # by the user, refused at `kubectl apply` (strict field validation, kubectl's default since
    # 1.27), or never, dropped where that validation is off.
    broken = copy.deepcopy(the_deployment())
    the_container(broken)["readinessProbe"]["periodSecond"] = 5
    assert schema_errors(broken) is not None


def test_the_deployment_selects_its_own_pods() -> None:
    # The API server refuses a Deployment whose selector does not match its template's labels.
    deployment = the_deployment()
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def served_routes(paths: set[str]) -> tuple[dict[str, str | None], int]:
    """The name of the route of the service's HTTP app that answers ``GET path`` (BentoML's
    ``readyz``, ``livez``...), and BentoML's HTTP port in the image, where neither PORT nor
    BENTOML_PORT is set. Asked in a child process: importing the service changes BentoML and
    uvicorn (docs/architecture.md), which the other tests of this process must not see."""
    script = """
import json, sys
from starlette.routing import Match
from bentoml._internal.configuration.containers import BentoMLContainer
from service.service import CreditRiskService

app = CreditRiskService.to_asgi()

def route(path):
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    return next((r.name for r in app.routes if r.matches(scope)[0] is Match.FULL), None)

print(json.dumps({"routes": {path: route(path) for path in sys.argv[1:]},
                  "http_port": BentoMLContainer.http.port.get()}))
"""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PORT", "BENTOML_PORT", "BENTOML_CONFIG"}
    }
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script, *sorted(paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["routes"], int(answer["http_port"])


def test_probes_and_ports_are_the_services() -> None:
    container = the_container(the_deployment())
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for name in ports:
        assert PORT_NAME.fullmatch(name), f"port name {name!r} is not an IANA service name"
    # Readiness must wait for the model (BentoML's readyz); liveness must not, or a pod whose
    # model takes long to load, or whose prediction log is down, would be restarted.
    wanted = {"startupProbe": "readyz", "readinessProbe": "readyz", "livenessProbe": "livez"}
    probes = {kind: container[kind]["httpGet"] for kind in wanted}
    routes, http_port = served_routes({probe["path"] for probe in probes.values()})
    for kind, probe in probes.items():
        assert routes[probe["path"]] == wanted[kind], f"{kind} on {probe['path']}"
        port = probe["port"]
        assert port in (ports if isinstance(port, str) else ports.values()), f"{kind} {port}"
        assert ports.get(port, port) == http_port, f"{kind} is not on the HTTP port"
    assert ports == {"http": http_port, "grpc": Settings.model_fields["grpc_port"].default}


def test_the_grpc_probe_of_the_prose_is_a_probe_on_the_grpc_port() -> None:
    # The prose offers `grpc: {...}` as a probe for gRPC clients: as a readiness probe of the
    # Deployment, it must pass the schema too (a gRPC probe takes a port number, not a name).
    text = (ROOT / DEPLOYMENT_DOC).read_text()
    snippets = re.findall(r"`(grpc: \{[^`]*\})`", text)
    assert snippets, f"{DEPLOYMENT_DOC} no longer shows a gRPC probe"
    for snippet in snippets:
        probe = yaml.safe_load(snippet)
        deployment = copy.deepcopy(the_deployment())
        the_container(deployment)["readinessProbe"] = probe
        assert schema_errors(deployment) is None, f"{snippet}: {schema_errors(deployment)}"
        assert probe["grpc"]["port"] == Settings.model_fields["grpc_port"].default
        # "" (the server's health) is what the service reports, NOT_SERVING at shutdown.
        assert probe["grpc"].get("service", "") == ""


def test_the_pod_runs_as_the_images_user() -> None:
    # BentoML's Dockerfile makes the user `bentoml` with this uid and gid; container/setup.sh
    # gives it /data. runAsNonRoot needs the number, and fsGroup makes the volume writable.
    spec = the_deployment()["spec"]["template"]["spec"]
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        assert context[field] == BENTO_UID_GID, field
    assert (
        not {"runAsUser", "runAsGroup"}
        & the_container(the_deployment()).get("securityContext", {}).keys()
    ), "the container's own user would override the pod's"


def image_defaults() -> dict[str, str]:
    """The environment bentofile.yaml sets in the image."""
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    return {item["name"]: str(item["value"]) for item in bentofile["docker"].get("envs", [])} | {
        item["name"]: str(item["value"]) for item in bentofile.get("envs", [])
    }


def pod_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The pod's environment: the image's (bentofile.yaml), overridden by the manifest's."""
    manifest = the_container(deployment).get("env", [])
    return image_defaults() | {item["name"]: item["value"] for item in manifest}


def setting_in_pod(deployment: dict[str, Any], name: str) -> str:
    """Setting ``name`` as the pod's service reads it, its default where nothing sets it."""
    return pod_env(deployment).get(name.upper(), str(Settings.model_fields[name].default))


def test_every_path_the_image_writes_is_on_a_writable_volume() -> None:
    deployment = the_deployment()
    spec = deployment["spec"]["template"]["spec"]
    container = the_container(deployment)
    state = [
        setting_in_pod(deployment, "prediction_log_spool_dir"),
        setting_in_pod(deployment, "drift_snapshot_dir"),
    ]
    log = parse_url(setting_in_pod(deployment, "prediction_log_url"))
    if log.get_backend_name() == "sqlite":
        state.append(str(PurePosixPath(str(log.database)).parent))
    # Each `bentoml serve` keeps its workers' metric files in Python's temporary directory
    # (service/prometheus_dir.py): /tmp in the image, where TMPDIR is not set.
    scratch = [pod_env(deployment).get("TMPDIR", "/tmp")]

    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {
        PurePosixPath(mount["mountPath"]): volumes[mount["name"]]
        for mount in container["volumeMounts"]
        if not mount.get("readOnly")
    }

    def volume_of(path: str) -> dict[str, Any]:
        assert PurePosixPath(path).is_absolute(), f"{path}: relative to the image's code"
        covering = [mount for mount in mounts if PurePosixPath(path).is_relative_to(mount)]
        assert covering, f"{path} is on the root filesystem (read-only in the Deployment)"
        return mounts[max(covering, key=lambda mount: len(mount.parts))]

    for path in state:
        # The log, its spool and the drift snapshots must outlive the pod.
        assert "persistentVolumeClaim" in volume_of(path), f"{path} is not on a claim"
    for path in scratch:
        volume_of(path)
    assert the_container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_variable_the_deployment_sets_is_read() -> None:
    # A misspelled setting is ignored by the service (extra="ignore"): the operator's value
    # would silently not apply.
    settings = {name.upper() for name in Settings.model_fields}
    for item in the_container(the_deployment()).get("env", []):
        name = item["name"]
        assert name in settings | OTHER_VARIABLES or OTEL_VARIABLE.fullmatch(name), name


def test_more_than_one_replica_logs_to_postgresql() -> None:
    # SQLite is for one replica (docs/prediction-log.md): replicas sharing its file on a
    # ReadWriteMany claim (a network filesystem) cannot rely on its locking, and replicas on
    # claims of their own split the log, each one's drift computed on part of the traffic.
    deployment = the_deployment()
    if deployment["spec"].get("replicas", 1) > 1:
        url = parse_url(setting_in_pod(deployment, "prediction_log_url"))
        assert url.get_backend_name() == "postgresql", url.render_as_string()


# Past the worst case, for the process's exit once its workers' logs closed (0.5 s measured) and
# the export of the spans still queued.
SHUTDOWN_MARGIN_SECONDS = 5


def worst_case_shutdown(env: Mapping[str, str]) -> float:
    """docs/deployment.md's worst-case shutdown (Shutdown) with the settings ``env`` sets and the
    defaults of the others: a request in flight to its timeout, the gRPC calls' grace, then the
    log's flush to a hung store beside drift's thread."""

    def setting(name: str) -> float:
        return float(env.get(name.upper(), Settings.model_fields[name].default))

    flush = setting("prediction_log_shutdown_timeout_seconds") + CLOSE_MARGIN_SECONDS
    return (
        setting("request_timeout_seconds")
        + setting("grpc_shutdown_grace_seconds")
        + max(flush, DRIFT_STOP_TIMEOUT_SECONDS)
    )


def test_the_documented_worst_case_shutdown_is_the_defaults() -> None:
    worst = f"{worst_case_shutdown({}):g} s"
    assert f"= {worst} with the defaults" in (ROOT / DEPLOYMENT_DOC).read_text()
    assert f"{worst} with the defaults" in SHUTDOWN_FORMULA  # the settings' descriptions
    # settings.py cannot import the writer or the monitor: its formula writes their waits out
    terms = f"PREDICTION_LOG_SHUTDOWN_TIMEOUT_SECONDS + {CLOSE_MARGIN_SECONDS:g}, "
    assert f"max({terms}{DRIFT_STOP_TIMEOUT_SECONDS:g})" in SHUTDOWN_FORMULA


def grace_periods() -> Iterator[tuple[str, float, Mapping[str, str]]]:
    """``(where, seconds, settings it sets)`` of every grace period the docs and compose give:
    the Deployment's terminationGracePeriodSeconds, each `docker run --stop-timeout`, compose's
    stop_grace_period."""
    deployment = the_deployment()
    spec = deployment["spec"]["template"]["spec"]
    yield "Deployment", spec["terminationGracePeriodSeconds"], pod_env(deployment)
    for doc in (DEPLOYMENT_DOC, "README.md"):
        runs = re.findall(r"docker run [^\n]*--stop-timeout (\d+)", (ROOT / doc).read_text())
        assert runs, f"{doc}: no `docker run --stop-timeout`"
        for seconds in runs:
            yield f"{doc}: docker run", float(seconds), image_defaults()
    compose = yaml.safe_load((ROOT / "monitoring" / "compose.yaml").read_text())
    service = compose["services"]["service"]
    period = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert period, f"compose: stop_grace_period {service['stop_grace_period']!r} not in seconds"
    environment = {k: str(v) for k, v in service.get("environment", {}).items()}
    yield "monitoring/compose.yaml", float(period[1]), image_defaults() | environment


def test_every_grace_period_covers_the_worst_case_shutdown() -> None:
    # Shorter, SIGKILL ends a shutdown still flushing the prediction log (a request in flight to
    # its timeout, then the store hung): the rows the workers held are lost.
    for where, seconds, env in grace_periods():
        worst = worst_case_shutdown(env)
        assert seconds >= worst + SHUTDOWN_MARGIN_SECONDS, (
            f"{where}: a grace period of {seconds:g} s; the worst-case shutdown takes {worst:g} s"
        )
