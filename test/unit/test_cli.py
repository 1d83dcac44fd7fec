"""The console script lists every component and is honest about what is missing."""

from __future__ import annotations

import pytest

from aviator import cli


def test_every_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


async def test_kube_client_on_uvloop() -> None:
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_only_the_chosen_subcommand_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    real_load = cli._load

    def recording_load(module: str) -> object:
        loaded.append(module)
        return real_load(module)

    monkeypatch.setattr(cli, "_load", recording_load)
    cli.build_parser(["manifests", "--check"])
    assert loaded == [cli.SUBCOMMANDS["manifests"][0]]


def test_a_crash_prints_the_python_stack() -> None:
    """A segfault in a C extension (uvloop, BCC) leaves the stack in the log."""
    import subprocess
    import sys

    crash = (
        "import faulthandler\n"
        "from aviator import cli\n"
        "try:\n"
        "    cli.main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "faulthandler._sigsegv()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "Fatal Python error: Segmentation fault" in done.stderr
