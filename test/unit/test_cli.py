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
