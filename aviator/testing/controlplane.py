"""Start and stop a real Kubernetes control plane on loopback: etcd, kube-apiserver and
kube-controller-manager, built from source by `make controlplane` into bin/.

The API server runs the aggregation layer as kubeadm configures it (`--requestheader-*`,
`--proxy-client-*`, a front-proxy CA of its own), so APIServices backed by a local
process (an ExternalName Service naming 127.0.0.1) are reachable through it.

Synchronous on purpose: pytest session fixtures, the box and benchmarks all use it, and
none of them should share an event loop with it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aviator.testing.pki import CertificateAuthority, KeyPair, service_account_keys
from aviator.testing.ports import free_port
from aviator.testing.spawn import spawn

# Where the binaries are: $AVIATOR_BIN_DIR (or a bin_dir argument, e.g. `--bin-dir`) if
# given, else ./bin (what `make controlplane` fills, for commands run in the checkout),
# else PATH. An installed package knows nothing of the repository it was built from.
BIN_DIR_ENV = "AVIATOR_BIN_DIR"
SERVICE_CIDR = "10.0.0.0/24"  # the API server's ClusterIP range
FRONT_PROXY_CLIENT = "front-proxy-client"  # the aggregator's client certificate's name

# The controllers a box needs: workloads become pods (DaemonSets too: one pod per
# node), Services get EndpointSlices, owners are garbage-collected, namespaces are
# emptied, every namespace gets its default ServiceAccount (pods are refused without
# it), and HorizontalPodAutoscalers scale (on the external metrics API Aviator's
# controller serves, docs/autoscaling.md).
CONTROLLERS = (
    "daemonset-controller",
    "deployment-controller",
    "horizontal-pod-autoscaler-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
)
# Every namespace's `kube-root-ca.crt` ConfigMap, which a kubelet mounting a pod's
# ServiceAccount token waits for: only for a control plane that serves pods of a real
# node (`advertise_address`); elsewhere it would be one more object in every namespace
# a test lists.
ROOT_CA_PUBLISHER = "root-ca-certificate-publisher-controller"

# Every request of Aviator's own ServiceAccounts is logged (so tests can prove RBAC
# allowed each one), and every write by anyone (so tests can count writes).
AVIATOR_SERVICE_ACCOUNTS = (
    "system:serviceaccount:aviator-system:aviator-controller",
    "system:serviceaccount:aviator-system:aviator-agent",
)
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "users": list(AVIATOR_SERVICE_ACCOUNTS)},
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message carries the component's own output."""


def binary(name: str, bin_dir: Path | None = None) -> Path:
    """The executable `name`: in `bin_dir` (else $AVIATOR_BIN_DIR) when one is given,
    otherwise ./bin, then PATH."""
    if bin_dir is None and os.environ.get(BIN_DIR_ENV):
        bin_dir = Path(os.environ[BIN_DIR_ENV])
    if bin_dir is not None:
        path = bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(
                f"{path} is missing: run `make controlplane` in the Aviator repository "
                "and point --bin-dir (or $AVIATOR_BIN_DIR) at its bin/"
            )
        return path.absolute()
    local = Path("bin") / name
    if os.access(local, os.X_OK):
        return local.absolute()
    found = shutil.which(name)
    if found is None:
        raise ControlPlaneError(
            f"{name} is neither in ./bin nor on PATH: run `make controlplane` in the Aviator "
            "repository, then run from there or pass --bin-dir (or set $AVIATOR_BIN_DIR)"
        )
    return Path(found)


@dataclass
class _Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            # Dies with this process, whichever thread starts (or restarts) it.
            self.process = spawn(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output_tail(self, lines: int = 30) -> str:
        """The last lines of the component's output, its error lines first."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in text if line.startswith(("Error", "E1", "E0", "F1", "F0"))]
        return "\n".join([*errors[-5:], "--- last lines ---", *text[-lines:]])

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on free loopback ports."""

    workdir: Path | None = None
    controllers: bool = True
    bin_dir: Path | None = None  # None: see binary()
    # The API server's address for pods in network namespaces of their own (the
    # `kubernetes` Service's endpoint, in the serving certificate): it then listens on
    # every address of its network namespace. None: loopback only.
    advertise_address: str | None = None
    startup_timeout_s: float = 90.0
    kubeconfig: Path = field(init=False)
    server: str = field(init=False, default="")
    etcd_url: str = field(init=False, default="")
    audit_log: Path = field(init=False)
    _owns_workdir: bool = field(init=False, default=False)
    _components: dict[str, _Component] = field(init=False, default_factory=dict)
    _admin: KeyPair = field(init=False)
    _ca: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.workdir is None:
            shm = Path("/dev/shm")
            parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
            self.workdir = Path(tempfile.mkdtemp(prefix="aviator-cp-", dir=parent))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.audit_log = self.workdir / "audit.log"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ControlPlane:
        assert self.workdir is not None
        atexit.register(self.stop)
        try:
            self._prepare()
            self._start_and_wait("etcd", self._etcd_ready)
            self._start_and_wait("kube-apiserver", self._apiserver_ready)
            if self.controllers:
                self._start_and_wait("kube-controller-manager", self._controller_manager_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            comp = self._components.get(name)
            if comp is not None:
                comp.stop()
        if self._owns_workdir and self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_apiserver(self) -> None:
        """Stop the API server process and start it again on the same port.

        Open watches hold a terminating API server for up to a minute; after a short
        grace it is killed, which is a restart any client must survive anyway.
        """
        self._components["kube-apiserver"].stop(grace_s=3.0)
        self._start_and_wait("kube-apiserver", self._apiserver_ready)

    @property
    def _controllers(self) -> tuple[str, ...]:
        return CONTROLLERS + ((ROOT_CA_PUBLISHER,) if self.advertise_address else ())

    @property
    def ca_file(self) -> Path:
        """The cluster CA (it signs the API server's and the admin's certificates)."""
        return self._ca

    def running(self) -> dict[str, bool]:
        return {name: comp.alive() for name, comp in self._components.items()}

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._components.values() if c.process is not None]

    # -- helpers for tests -----------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(binary("kubectl", self.bin_dir)), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            )
        return result

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision, so watches from older versions get 410."""
        answer = self._etcd_call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        header = answer["header"]
        assert isinstance(header, dict)
        revision = int(header["revision"])
        self._etcd_call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def api_get(self, path: str) -> tuple[int, str]:
        """GET a path with the admin identity (used by readiness checks)."""
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    # -- internals -------------------------------------------------------------------

    def _prepare(self) -> None:
        assert self.workdir is not None
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca = CertificateAuthority(pki)
        self._ca = ca.cert_path
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "::1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                *([self.advertise_address] if self.advertise_address else []),
            ),
        )
        self._admin = ca.issue("admin", "admin", organization="system:masters", client=True)
        sa = service_account_keys(pki)
        # The aggregation layer, as kubeadm sets it up: a CA of its own for the front
        # proxy, whose client certificate the API server presents to aggregated APIs.
        front = pki / "front-proxy"
        front.mkdir(exist_ok=True)
        front_ca = CertificateAuthority(front)
        proxy_client = front_ca.issue("front-proxy-client", FRONT_PROXY_CLIENT, client=True)

        etcd_port, etcd_peer = free_port(), free_port()
        api_port = free_port()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        self.server = f"https://127.0.0.1:{api_port}"
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        self._write_kubeconfig()

        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        peer = f"http://127.0.0.1:{etcd_peer}"
        self._components["etcd"] = _Component(
            "etcd",
            [
                str(binary("etcd", self.bin_dir)),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # tmpfs and throwaway data: durability buys nothing
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        self._components["kube-apiserver"] = _Component(
            "kube-apiserver",
            [
                str(binary("kube-apiserver", self.bin_dir)),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={'0.0.0.0' if self.advertise_address else '127.0.0.1'}",
                f"--advertise-address={self.advertise_address or '127.0.0.1'}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self._ca}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local,aviator",
                "--authorization-mode=RBAC",
                f"--requestheader-client-ca-file={front_ca.cert_path}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_client.cert}",
                f"--proxy-client-key-file={proxy_client.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # `kubectl logs/exec` through a real node's kubelet, found by its address
                # (no DNS for node names here).
                f"--kubelet-client-certificate={self._admin.cert}",
                f"--kubelet-client-key={self._admin.key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        self._components["kube-controller-manager"] = _Component(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager", self.bin_dir)),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(self._controllers)}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={self._ca}",
                "--use-service-account-credentials=false",
                # HPAs look every 5 s (15 s upstream): tests wait for them less long.
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )

    def _write_kubeconfig(self) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "aviator-local",
                    "cluster": {"server": self.server, "certificate-authority-data": b64(self._ca)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(self._admin.cert),
                        "client-key-data": b64(self._admin.key),
                    },
                }
            ],
            "contexts": [
                {"name": "aviator-local", "context": {"cluster": "aviator-local", "user": "admin"}}
            ],
            "current-context": "aviator-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self._ca))
        ctx.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return ctx

    def _start_and_wait(self, name: str, ready: Callable[[], bool]) -> None:
        comp = self._components[name]
        comp.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not comp.alive():
                raise ControlPlaneError(f"{name} exited during start-up:\n{comp.output_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {self.startup_timeout_s:.0f} s:\n{comp.output_tail()}"
        )

    def _etcd_call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result

    def _etcd_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.api_get("/readyz")
        except OSError:
            return False
        return status == 200

    def _controller_manager_ready(self) -> bool:
        # The serviceaccount controller creating "default" in kube-system proves the
        # controller manager is up and acting.
        status, _ = self.api_get("/api/v1/namespaces/kube-system/serviceaccounts/default")
        return status == 200
