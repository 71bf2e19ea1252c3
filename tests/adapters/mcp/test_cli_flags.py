"""Flags of the proxy command: none is silently ignored, and the namespace is the operator's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from agentguard_mcp import META_TOOL
from agentguard_mcp.cli import app
from mcp import Client
from typer.testing import CliRunner

from tests.adapters.mcp.mcp_support import HERE, Setup, proxy_params, records, text_of

BANK_SERVER = str(HERE / "bank_server.py")


@pytest.mark.parametrize(
    "flag",
    [
        ["--trusted"],
        ["--agentguard-aware"],
        ["--namespace", "x"],
        ["--approver", "user:a"],
        ["--timeout", "5"],
        ["--max-result-bytes", "4096"],
    ],
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


@pytest.mark.parametrize(
    "flag",
    [
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--max-result-bytes", "10"],
        ["--store-timeout", "0"],
        ["--store-timeout", "601"],
    ],
)
def test_limits_out_of_range_are_usage_errors(tmp_path: Path, flag: list[str]) -> None:
    """A timeout or size limit that could not work is refused before anything starts (exit 2)."""
    args = ["proxy", "--home", str(tmp_path), "--namespace", "x", "--http", "127.0.0.1:1"]
    result = CliRunner().invoke(app, [*args, *flag, "--", "true"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert flag[0] in result.output


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("store_timeout: 0\nupstreams: {x: {command: [x]}}\n", "store_timeout"),
        ("store_timeout: 700\nupstreams: {x: {command: [x]}}\n", "store_timeout"),
        ("upstreams: {x: {command: [x], timeout: soon}}\n", "upstreams.x.timeout"),
        ("upstreams: {x: {command: [x], timeout: true}}\n", "upstreams.x.timeout"),
        ("upstreams: {x: {command: [x], max_result_bytes: 1.5}}\n", "max_result_bytes"),
        ("upstreams: {x: {command: [x], max_result_bytes: 2000000000}}\n", "max_result_bytes"),
    ],
)
def test_config_limits_out_of_range_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    from agentguard_mcp.config import load_config

    from agentguard.errors import ConfigError

    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_config_limits_are_read(tmp_path: Path) -> None:
    from agentguard_mcp.config import DEFAULT_MAX_RESULT_BYTES, DEFAULT_TIMEOUT, load_config

    path = tmp_path / "proxy.yaml"
    path.write_text(
        "store_timeout: 2.5\nupstreams:\n  a: {command: [x], timeout: 7, max_result_bytes: 4096}\n"
        "  b: {command: [y]}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.store_timeout == 2.5
    a, b = config.upstreams
    assert (a.timeout, a.max_result_bytes) == (7.0, 4096)
    assert (b.timeout, b.max_result_bytes) == (DEFAULT_TIMEOUT, DEFAULT_MAX_RESULT_BYTES)
    assert (DEFAULT_TIMEOUT, DEFAULT_MAX_RESULT_BYTES) == (120, 16 * 1024 * 1024)  # as README says
    assert load_config(tmp_path / "proxy.yaml").store_timeout == 2.5
    path.write_text("upstreams: {a: {command: [x]}}\n", encoding="utf-8")
    assert load_config(path).store_timeout is None  # the policy's storage.busy_timeout


def test_unreachable_upstream_names_no_url(tmp_path: Path) -> None:
    """An upstream that cannot be reached is named; its URL (maybe with credentials) is not."""
    config = tmp_path / "proxy.yaml"
    secret_url = "http://user:s3cr3t-canary@127.0.0.1:9/mcp"
    config.write_text(f"home: {tmp_path / 'home'}\nupstreams:\n  far:\n    url: {secret_url}\n")
    result = CliRunner().invoke(app, ["proxy", "--config", str(config), "--http", "127.0.0.1:0"])
    assert result.exit_code != 0
    assert "s3cr3t-canary" not in result.output
    assert "cannot reach upstream 'far' at http://127.0.0.1:9: " in result.output


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


def _run_proxy(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentguard_mcp", "proxy", "--home", str(setup.home), *args],
        stdin=subprocess.DEVNULL,  # a proxy that did start serves stdio: EOF ends it
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_single_upstream_needs_a_namespace_from_the_operator(
    setup: Setup, tmp_path: Path
) -> None:
    """Without --namespace the proxy refuses to start (exit 2) and says what to add.

    The upstream calls itself ``time``: taking that as its namespace would give
    it whatever delegations grant ``time/*``. Nothing is started.
    """
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation_file(setup.delegation(["time/*"]))
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.agent.id, "--policy", str(setup.policy_file),
        "--", sys.executable, BANK_SERVER, "--record", str(record), "--name", "time",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "add --namespace NAME" in done.stderr
    assert "Traceback" not in done.stderr
    assert records(record) == []


def test_an_upstream_calling_itself_time_does_not_get_the_time_namespace(
    setup: Setup, tmp_path: Path
) -> None:
    """A delegation for ``time/*`` reaches nothing behind ``--namespace notes``: exit 3."""
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation_file(setup.delegation(["time/*"]))
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.agent.id, "--policy", str(setup.policy_file),
        "--namespace", "notes",
        "--", sys.executable, BANK_SERVER, "--record", str(record), "--name", "time",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "reaches none of this proxy's namespaces (notes); it reaches time " in done.stderr


def test_a_key_holder_that_is_not_the_delegations_holder_is_told_so(
    setup: Setup, tmp_path: Path
) -> None:
    """--as with someone else's key: "not the holder", not the namespace error (exit 3)."""
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation_file(setup.delegation(["time/*"]))
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.alice.id, "--policy", str(setup.policy_file),
        "--namespace", "notes",
        "--", sys.executable, BANK_SERVER, "--record", str(record),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"{setup.alice.id} is not the holder of this delegation ({setup.agent.id})" in (
        done.stderr
    )
    assert "namespaces" not in done.stderr


def test_the_namespace_error_lists_what_the_delegation_reaches(setup: Setup) -> None:
    """The holder's link's namespaces, as patterns where they are patterns."""
    from agentguard_mcp.proxy import granted_namespaces

    from agentguard.store.memory import MemoryStore
    from agentguard.verify import Verifier

    verifier = Verifier([setup.org.principal], revocations=MemoryStore())
    parent = setup.delegation(["time/*", "notes/read_note", "t*/x"])
    child = parent.attenuate(
        setup.agent, setup.alice.principal, ["time/get_current_time", "tickets/x"]
    )
    assert granted_namespaces(verifier.verify_chain(parent)) == ["notes", "t*", "time"]
    assert granted_namespaces(verifier.verify_chain(child)) == ["tickets", "time"]


def test_a_mistyped_upstream_command_is_named(setup: Setup, tmp_path: Path) -> None:
    """A command that does not exist: exit 1, the program named, no traceback."""
    delegation = setup.delegation_file(setup.delegation(["time/*"]))
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.agent.id, "--policy", str(setup.policy_file),
        "--namespace", "time", "--", "mcp-server-tme", "--local-timezone", "UTC",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert (
        "cannot start upstream 'time': command 'mcp-server-tme': no such program "
        "(check the command's spelling and PATH)"
    ) in done.stderr
    assert "Traceback" not in done.stderr


def test_an_upstream_that_exits_before_the_handshake_is_named(setup: Setup, tmp_path: Path) -> None:
    """A program that runs but never speaks MCP: named, with the kind of failure; not its args."""
    delegation = setup.delegation_file(setup.delegation(["time/*"]))
    done = _run_proxy(
        setup,
        "--delegation", str(delegation), "--as", setup.agent.id, "--policy", str(setup.policy_file),
        "--namespace", "time", "--", sys.executable, "-c", "print('secret-arg-canary')",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot start upstream 'time': command {sys.executable!r}: it did not " in done.stderr
    # Neither its arguments nor its output (the SDK logs unparsable lines with a traceback).
    assert "secret-arg-canary" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.anyio
async def test_the_namespace_is_the_operators_with_a_live_client(
    setup: Setup, tmp_path: Path
) -> None:
    """Behind ``--namespace bank`` the self-styled ``time`` server's tools are ``bank/...``."""
    record = tmp_path / "calls.jsonl"
    delegation = setup.delegation_file(setup.delegation(["bank/read_files"]))
    params = proxy_params(
        [
            "proxy", "--delegation", str(delegation), "--as", setup.agent.id,
            "--home", str(setup.home), "--policy", str(setup.policy_file),
            "--namespace", "bank", "--trusted",
            "--", sys.executable, BANK_SERVER, "--record", str(record), "--name", "time",
        ]
    )  # fmt: skip
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            listed = (await client.list_tools()).tools
            assert [(t.meta or {})[META_TOOL] for t in listed] == ["bank/read_files"]
            result = await client.call_tool("read_files", {"paths": ["/srv/a"]})
            assert not result.is_error, text_of(result)
