"""The real test control plane: etcd, kube-apiserver, controller-manager, scheduler and kwok.

One control plane per test session, built by `tools/k8s/build.sh` (`make k8s-bins`) and started
on loopback ports chosen at run time:

    etcd ─► kube-apiserver (TLS with a CA made here, static admin token, service-account keys)
              ├─► kube-controller-manager (Deployments → ReplicaSets → Pods, garbage collector)
              ├─► kube-scheduler (binds Pods to nodes)
              └─► kwok (plays the kubelet of a fake GPU node: Pods turn Running and Ready)

Tests get a `ControlPlane` with a kubeconfig (admin) and the paths of the built binaries. All
processes are stopped at the end of the session, also when a start-up step fails. Missing
binaries fail the session with the command that builds them: CI builds them, so a skip would
hide a broken build.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
import os
import random
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BLOCK_K8S_BIN_DIR", REPO_ROOT / "tools" / "k8s" / "bin"))
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "helm")
KWOK_STAGES = "kwok-stages.yaml"

# The fake node: what kwok pretends to be. Capacity in the units the kubelet reports.
FAKE_NODE_NAME = "kwok-gpu-0"
FAKE_NODE_GPUS = 8
SERVICE_CIDR = "10.96.0.0/24"
POD_CIDR = "10.244.0.0/16"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class ControlPlane:
    """A running test control plane, as the tests see it."""

    server: str  # https://127.0.0.1:<port>
    kubeconfig: Path  # admin (system:masters) credentials
    token: str
    ca_file: Path
    bin_dir: Path
    workdir: Path
    node_name: str

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to this cluster (kubectl-style clients)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        # helm keeps caches and repositories under $HOME by default; keep them out of it.
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = str(self.workdir / "helm" / sub)
        return env


def _free_port() -> int:
    """A free port below the kernel's ephemeral range. A port the kernel hands out for port 0
    is an ephemeral one: between choosing it and the component binding it, an outgoing
    connection of another component may take it as its local port (seen: kwok failing with
    "address already in use" after etcd, the apiserver and the controllers had connected)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_pki(d: Path) -> dict[str, Path]:
    """A CA, the apiserver's serving certificate and the service-account key pair."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "block-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    # In-cluster clients reach the apiserver as the first IP of the service range or by DNS name.
    first_service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(first_service_ip),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": _pem_cert(ca_cert),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": _pem_cert(serving_cert),
        "apiserver.key": _pem_key(serving_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths = {}
    for name, data in files.items():
        path = d / name
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    """A kubeconfig for one token user (also used by tests for service-account tokens)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "block-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "block-test", "context": {"cluster": "block-test", "user": user}}],
        "current-context": "block-test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class _Processes:
    """Starts the components, keeps their logs, stops them in reverse order."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self._logdir / f"{name}.log").open("wb")
        # A new session so that a Ctrl-C in the terminal reaches pytest only; we stop them.
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self._running.append((name, proc))
        return proc

    def log_tail(self, name: str, num_lines: int = 40) -> str:
        path = self._logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])

    def wait_until(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll `ready` until it holds; fail with the component's log if it dies or stalls."""
        proc = dict(self._running)[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} during start-up; its log:\n"
                    + self.log_tail(name)
                )
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"{name} not ready after {timeout_s:.0f} s; its log:\n" + self.log_tail(name)
        )

    def stop_all(self) -> None:
        for _name, proc in reversed(self._running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self._running):
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._running.clear()


def _http_ok(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _insecure_context() -> ssl.SSLContext:
    # controller-manager and scheduler serve /healthz with a self-signed certificate of their own.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _fake_gpu_node(name: str) -> dict[str, Any]:
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "nvidia.com/gpu": str(FAKE_NODE_GPUS),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class ApiStatusError(Exception):
    """The apiserver answered with an error status (its Status message in the text)."""

    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {code}: {body.get('message', body)}")
        self.code = code
        self.body = body


class Api:
    """Plain JSON over HTTPS to the apiserver, as one token's user (admin or a service account).

    The tests speak the REST API directly, so what they check is what any client would see.
    """

    Error = ApiStatusError  # for `pytest.raises(api.Error)`: tests cannot import conftest

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        self.server = server
        self._token = token
        self._context = ssl.create_default_context(cafile=str(ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | list[Any] | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(
            url,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": content_type,
                "Accept": accept,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as resp:
                result: dict[str, Any] = json.loads(resp.read() or b"{}")
                return result
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw)
            except ValueError:
                detail = {"message": raw.decode(errors="replace")}
            raise ApiStatusError(e.code, detail) from None

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiStatusError as e:
            if e.code == 404:
                return None
            raise

    def list(self, path: str, label_selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self.request("GET", path, query=query)["items"]
        return items

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ApiStatusError as e:
            if e.code != 404:
                raise

    def serves(self, group_version_path: str, plural: str) -> bool:
        """Whether discovery lists `plural` under `/apis/<group>/<version>` (what the operator
        asks before rendering an InferencePool)."""
        found = self.get(group_version_path) or {}
        return any(r.get("name") == plural for r in found.get("resources", []))


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def _node_ready(api: Api, name: str) -> bool:
    try:
        node = api.get(f"/api/v1/nodes/{name}")
    except (ApiStatusError, urllib.error.URLError, OSError):
        return False
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _default_service_account_exists(api: Api) -> bool:
    # Pods are rejected until the controller-manager has made the namespace's service account.
    try:
        return api.get("/api/v1/namespaces/default/serviceaccounts/default") is not None
    except (ApiStatusError, urllib.error.URLError, OSError):
        return False


def _start_control_plane(procs: _Processes, workdir: Path) -> ControlPlane:
    pki = _make_pki(workdir)
    token = secrets.token_urlsafe(32)
    token_file = workdir / "tokens.csv"
    token_file.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    token_file.chmod(0o600)

    etcd_port, etcd_peer_port, api_port = _free_port(), _free_port(), _free_port()
    cm_port, sched_port, kwok_port = _free_port(), _free_port(), _free_port()

    procs.start(
        "etcd",
        [
            str(BIN_DIR / "etcd"),
            "--name=test",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{etcd_peer_port}",
            "--listen-metrics-urls=",
            # A throw-away store: fsync buys nothing here and costs seconds on a shared disk.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    procs.wait_until("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30)

    server = f"https://127.0.0.1:{api_port}"
    procs.start(
        "kube-apiserver",
        [
            str(BIN_DIR / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Loopback may not be an Endpoints address, so the `kubernetes` Service's endpoint
            # reconciler would only log errors; nothing in the tests needs that Service.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "-v=1",
        ],
    )
    ca_context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    procs.wait_until(
        "kube-apiserver",
        lambda: _http_ok(f"{server}/readyz", ca_context, token),
        START_TIMEOUT_S,
    )

    kubeconfig = write_kubeconfig(workdir / "kubeconfig", server, pki["ca.crt"], token, "admin")
    cp = ControlPlane(
        server=server,
        kubeconfig=kubeconfig,
        token=token,
        ca_file=pki["ca.crt"],
        bin_dir=BIN_DIR,
        workdir=workdir,
        node_name=FAKE_NODE_NAME,
    )
    delegated_auth = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "-v=1",
    ]
    procs.start(
        "kube-controller-manager",
        [
            str(BIN_DIR / "kube-controller-manager"),
            *delegated_auth,
            f"--secure-port={cm_port}",
            f"--root-ca-file={pki['ca.crt']}",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Every controller acts with the admin token: per-controller service accounts only
            # add start-up latency in a throw-away cluster.
            "--use-service-account-credentials=false",
            # Faster rollouts and garbage collection than the production defaults.
            "--concurrent-deployment-syncs=10",
            "--concurrent-gc-syncs=10",
        ],
    )
    procs.start(
        "kube-scheduler",
        [str(BIN_DIR / "kube-scheduler"), *delegated_auth, f"--secure-port={sched_port}"],
    )
    insecure = _insecure_context()
    procs.wait_until(
        "kube-controller-manager",
        lambda: _http_ok(f"https://127.0.0.1:{cm_port}/healthz", insecure),
        START_TIMEOUT_S,
    )
    procs.wait_until(
        "kube-scheduler",
        lambda: _http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure),
        START_TIMEOUT_S,
    )

    procs.start(
        "kwok",
        [
            str(BIN_DIR / "kwok"),
            f"--config={BIN_DIR / KWOK_STAGES}",
            f"--kubeconfig={kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{kwok_port}",
        ],
    )
    procs.wait_until(
        "kwok", lambda: _http_ok(f"http://127.0.0.1:{kwok_port}/healthz"), START_TIMEOUT_S
    )
    api = Api(server, token, pki["ca.crt"])
    api.create("/api/v1/nodes", _fake_gpu_node(FAKE_NODE_NAME))
    procs.wait_until("kwok", lambda: _node_ready(api, FAKE_NODE_NAME), START_TIMEOUT_S)
    procs.wait_until(
        "kube-controller-manager", lambda: _default_service_account_exists(api), START_TIMEOUT_S
    )
    return cp


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = [b for b in (*BINARIES, KWOK_STAGES) if not (BIN_DIR / b).exists()]
    if missing:
        pytest.fail(
            f"the test control plane is not built ({', '.join(missing)} missing from {BIN_DIR}): "
            "run `make k8s-bins` (tools/k8s/build.sh)",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("k8s")
    procs = _Processes(workdir)
    try:
        cp = _start_control_plane(procs, workdir)
    except BaseException:
        procs.stop_all()
        raise
    try:
        yield cp
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Api:
    """The admin's view of the test control plane."""
    return Api(control_plane.server, control_plane.token, control_plane.ca_file)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """`wait_for(what, check, timeout_s=60)`: poll until `check()` is truthy, return it."""
    return wait_for


@pytest.fixture
def namespace(api: Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, named after it, deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))
    name = f"{base[:40].strip('-')}-{secrets.token_hex(3)}"
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    # Pods need the namespace's default service account, made by the controller-manager.
    wait_for(
        f"service account default in {name}",
        lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        30,
    )
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


# --- The operator under test -------------------------------------------------------------------

BLOCK_CLI = Path(sys.executable).with_name("block")
TEST_IMAGE = "block:test"

# Plural names of the kinds tests create from manifests (cluster-scoped ones have no namespace).
_PLURALS = {
    "Namespace": ("namespaces", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "ServiceAccount": ("serviceaccounts", True),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "Deployment": ("deployments", True),
    "Service": ("services", True),
    "ConfigMap": ("configmaps", True),
    "BlockCluster": ("blockclusters", True),
    "InferencePool": ("inferencepools", True),
}


def object_path(obj: dict[str, Any], namespace: str | None = None) -> str:
    """REST path of a manifest's object (`namespace` fills in a namespaced one without it)."""
    plural, namespaced = _PLURALS[obj["kind"]]
    version = obj["apiVersion"]
    prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
    if namespaced:
        ns = obj["metadata"].get("namespace") or namespace
        prefix += f"/namespaces/{ns}"
    return f"{prefix}/{plural}/{obj['metadata']['name']}"


def apply(api: Api, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """Server-side apply as `kubectl apply --server-side` does, strict about unknown fields."""
    query = {"fieldManager": "block-tests", "force": "true", "fieldValidation": "Strict"}
    return api.request(
        "PATCH", object_path(obj, namespace), obj, "application/apply-patch+yaml", query
    )


@pytest.fixture(name="apply")
def apply_fixture(api: Api) -> Callable[..., dict[str, Any]]:
    """`apply(obj, namespace=None)`: server-side apply of a manifest as the admin."""
    return lambda obj, namespace=None: apply(api, obj, namespace)


@pytest.fixture
def api_for_token(control_plane: ControlPlane) -> Callable[[str], Api]:
    """`api_for_token(token)`: the apiserver as another identity (a service account)."""
    return lambda token: Api(control_plane.server, token, control_plane.ca_file)


@pytest.fixture(scope="session")
def blockcluster_crd(api: Api) -> dict[str, Any]:
    """The BlockCluster CRD, installed once (as `block operator crd` prints it)."""
    from block.operator.blockcluster import crd_objects

    crd = crd_objects.crd()
    apply(api, crd)

    def established() -> bool:
        got = api.get(object_path(crd)) or {}
        conditions = (got.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for("the BlockCluster CRD to be established", established, 30)
    return crd


INFERENCE_POOL_CRD = (
    Path(__file__).with_name("crds") / "inference.networking.k8s.io_inferencepools.yaml"
)
INFERENCE_POOL_API = "/apis/inference.networking.k8s.io/v1"


def inference_pool_api_served(api: Api) -> bool:
    return api.serves(INFERENCE_POOL_API, "inferencepools")


@pytest.fixture
def inference_pool_crd(api: Api) -> Iterator[Callable[[], dict[str, Any]]]:
    """`install()`: the Gateway API Inference Extension's published InferencePool CRD (v1),
    installed and established; removed again after the test (with every InferencePool), so the
    other tests see a cluster without the API. Tests that need the CRD from the start call it
    first; others install it midway, to see the operator notice."""
    crd = yaml.safe_load(INFERENCE_POOL_CRD.read_text())
    installed: list[bool] = []

    def install() -> dict[str, Any]:
        apply(api, crd)
        installed.append(True)
        wait_for("the InferencePool API to be served", lambda: inference_pool_api_served(api), 30)
        return crd

    assert not inference_pool_api_served(api), "a previous test left the InferencePool CRD"
    yield install
    if installed:
        api.delete(object_path(crd))
        wait_for(
            "the InferencePool CRD to be gone",
            lambda: api.get(object_path(crd)) is None and not inference_pool_api_served(api),
            60,
        )


@dataclasses.dataclass
class OperatorProcess:
    """A `block operator run` subprocess and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under it."""
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, blockcluster_crd: dict[str, Any], tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start `block operator run` (admin credentials unless given a kubeconfig); stops them all.

    Each test's operator watches only the test's namespace, so operators of different tests
    never act on the same objects.
    """
    started: list[OperatorProcess] = []

    def start(
        namespaces: list[str],
        kubeconfig: Path | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> OperatorProcess:
        port = _free_port()
        log = tmp_path / f"operator-{len(started)}.log"
        argv = [
            str(BLOCK_CLI), "operator", "run",
            *(args if args is not None else [f"--image={TEST_IMAGE}", "--resync-interval=5"]),
            *[f"--namespace={ns}" for ns in namespaces],
            # Last, so they win over the chart's own values when a test passes those.
            "--liveness-host=127.0.0.1", f"--liveness-port={port}",
        ]  # fmt: skip
        full_env = control_plane.env()
        full_env["KUBECONFIG"] = str(kubeconfig or control_plane.kubeconfig)
        full_env.update(env or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, start_new_session=True,
            )  # fmt: skip
        operator = OperatorProcess(proc, log)
        started.append(operator)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _http_ok(f"http://127.0.0.1:{port}/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                operator.stop()
                raise AssertionError(f"the operator did not start; its log:\n{operator.log_text()}")
            time.sleep(0.2)
        return operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def service_account_kubeconfig(control_plane: ControlPlane, api: Api, tmp_path: Path) -> Any:
    """`make(namespace, name)`: a kubeconfig with a fresh token of that service account."""

    def make(namespace: str, name: str) -> tuple[Path, str]:
        review = api.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"spec": {"expirationSeconds": 3600}},
        )
        token = review["status"]["token"]
        path = tmp_path / f"kubeconfig-{namespace}-{name}"
        user = f"system:serviceaccount:{namespace}:{name}"
        cp = control_plane
        kubeconfig = write_kubeconfig(path, cp.server, cp.ca_file, token, user)
        return kubeconfig, token

    return make
