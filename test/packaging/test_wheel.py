"""Aviator runs from an installed wheel, with nothing of the checkout importable.

The wheel is built from the repository's files (copied to a temporary directory, so
the build leaves nothing in the checkout), installed with its dependencies into a
fresh venv in an empty directory outside the repository, and run from there:
`aviator agent --check` compiles and loads the BPF source shipped in the wheel, and
`aviator box demo` runs the quick-start with the manifests, test app, RBAC, CRD and
sample policy shipped in the wheel, the control-plane binaries given by --bin-dir.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / "bin"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# Not build inputs, and big: the venv, the control-plane binaries, caches, outputs.
IGNORED = (".git", ".venv", "bin", "build", "dist", ".box", ".deploy", "__pycache__")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    work: Path  # the empty working directory the commands run in

    @property
    def site_packages(self) -> Path:
        (site,) = self.venv.glob("lib/python*/site-packages")
        return site

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AVIATOR_"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _sources(dest: Path) -> Path:
    """The build inputs as they are in the working tree (committed or not)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive)
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED, "*.egg-info"))
        return dest
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file() and name.split("/")[0] not in IGNORED:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _bcc_package() -> Path | None:
    """Debian's BCC module (python3-bpfcc; `make setup` links it into .venv)."""
    spec = importlib.util.find_spec("bcc")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent
    debian = Path("/usr/lib/python3/dist-packages/bcc")
    return debian if debian.is_dir() else None


def _must(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    source = _sources(tmp / "src")
    dist = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    _must(build, "pip wheel")
    (wheel,) = dist.glob("aviator-*.whl")
    venv = tmp / "venv"
    _must(
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        ),
        "python -m venv",
    )
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    _must(pip, "pip install of the wheel and its dependencies")
    work = tmp / "work"
    work.mkdir()
    result = Installed(wheel=wheel, venv=venv, work=work)
    bcc = _bcc_package()
    if bcc is not None:
        # As `make setup` does for .venv: a folder holding nothing but BCC, on the path.
        shim = tmp / "bcc-shim"
        shim.mkdir()
        (shim / "bcc").symlink_to(bcc)
        (result.site_packages / "aviator-bcc.pth").write_text(f"{shim}\n")
    yield result


def test_the_wheel_carries_the_repository_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = {
        "bpf": "aviator/agent/bpf/src",
        "config": "aviator/config",
        "test/functional": "aviator/box/quickstart",
    }
    for directory, package in shipped.items():
        wanted = [
            p.relative_to(ROOT / directory)
            for p in (ROOT / directory).rglob("*")
            # __pycache__: what importing the test app in this tree left (not sources)
            if (p.suffix in (".c", ".h", ".yaml") or p.name.startswith("testapp"))
            and "__pycache__" not in p.parts
        ]
        assert wanted, directory
        for relative in wanted:
            assert f"{package}/{relative}" in names, f"{directory}/{relative} is not in the wheel"
    assert not [n for n in names if Path(n).name.startswith("test_")], "tests shipped"


def test_nothing_of_the_checkout_is_imported(installed: Installed) -> None:
    probe = installed.run(
        "python",
        "-c",
        "import aviator, aviator.agent.bpf.loader as l, aviator.box.files as f; "
        "print(aviator.__file__); print(l.SOURCE); print(f.TESTAPP); print(f.CRD_FILE)",
        timeout=60,
    )
    _must(probe, "importing the installed package")
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(installed.site_packages), line
        assert Path(line).exists(), line


def test_installed_agent_compiles_the_shipped_bpf_source(installed: Installed) -> None:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    if _bcc_package() is None:
        pytest.skip("BCC (Debian python3-bpfcc) is not installed: run `make setup`")
    check = installed.run("aviator", "agent", "--check", "--max-sockets", "1024", timeout=120)
    _must(check, "aviator agent --check")
    shipped = installed.site_packages / "aviator" / "agent" / "bpf" / "src" / "latency.bpf.c"
    assert f"eBPF ok: {shipped} compiled, loaded and attached" in check.stdout, check.stdout


def test_installed_box_runs_the_demo(installed: Installed) -> None:
    if os.geteuid() != 0:
        pytest.skip("the cluster in a box needs root (it creates its own network namespace)")
    missing = [name for name in CONTROL_PLANE if not (BIN_DIR / name).exists()]
    if missing:
        pytest.skip(f"bin/{missing[0]} is missing: run `make controlplane`")
    # Bounded by --duration, ended by the event it waits for (convergence), not a clock
    # a busy machine can outrun.
    demo = installed.run(
        "aviator",
        "box",
        "demo",
        "--duration",
        "240",
        "--stop-after-converged",
        "5",
        "--bin-dir",
        str(BIN_DIR),
        timeout=300,
    )
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    for expected in (
        "AviatorPolicy CRD: installed",
        "deployment.apps/fast-app created",
        "deployment.apps/slow-app created",
        "service/my-app-service created",
        "my-app-service is served by",
        "BEFORE Aviator",
        "aviatorpolicy.aviator.example.com/",
        "started the controller",
        "converged: only fast pods serve my-app-service-aviator",
        "box stopped",
    ):
        assert expected in out, f"{expected!r} not in the demo's output:\n{out}"
    for problem in ("not-implemented", "restarting", "failed"):
        assert problem not in out, f"{problem!r} in the demo's output:\n{out}"
    box = installed.work / ".box"
    assert not (box / "status.json").exists()
    if _bcc_package() is not None:  # the agents ran the BPF program shipped in the wheel
        logs = sorted((box / "logs").glob("agent-*.log"))
        assert logs
        for log in logs:
            assert "source ebpf" in log.read_text(), log.read_text()
