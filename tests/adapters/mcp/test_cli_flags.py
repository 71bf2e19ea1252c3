"""Flags of the proxy command that would be silently ignored are refused instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from agentguard_mcp.cli import app
from typer.testing import CliRunner


@pytest.mark.parametrize(
    "flag", [["--trusted"], ["--agentguard-aware"], ["--namespace", "x"], ["--approver", "user:a"]]
)
def test_single_upstream_flags_are_refused_with_config(tmp_path: Path, flag: list[str]) -> None:
    """With --config, a single-upstream flag is a usage error (exit 2), not ignored."""
    config = tmp_path / "proxy.yaml"
    config.write_text("upstreams: {}\n")
    result = CliRunner().invoke(
        app, ["proxy", "--config", str(config), *flag], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2
    assert "configuration file" in result.output


def test_unreachable_upstream_names_no_url(tmp_path: Path) -> None:
    """An upstream that cannot be reached is named; its URL (maybe with credentials) is not."""
    config = tmp_path / "proxy.yaml"
    secret_url = "http://user:s3cr3t-canary@127.0.0.1:9/mcp"
    config.write_text(f"home: {tmp_path / 'home'}\nupstreams:\n  far:\n    url: {secret_url}\n")
    result = CliRunner().invoke(app, ["proxy", "--config", str(config), "--http", "127.0.0.1:0"])
    assert result.exit_code != 0
    assert "s3cr3t-canary" not in result.output


@pytest.mark.parametrize(
    "text",
    [
        "upstreams:\n  notes: {command: [x], trusted: false, trusted: true}\n",
        "annotation_step_up: true\nannotation_step_up: false\nupstreams: {}\n",
        "upstreams:\n  notes: {command: [x]}\n  notes: {command: [y], trusted: true}\n",
    ],
)
def test_a_config_that_repeats_a_key_is_refused(tmp_path: Path, text: str) -> None:
    """A second 'trusted' or 'annotation_step_up' never silently wins: the file is refused."""
    from agentguard_mcp.config import load_config

    from agentguard.errors import ConfigError

    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key"):
        load_config(path)
