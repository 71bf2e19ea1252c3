"""The README's code and commands keep working (docs cannot drift)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
AGENTGUARD = Path(sys.executable).with_name("agentguard")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_quickstart_is_short_and_runs(tmp_path: Path) -> None:
    """The quickstart stays under 15 lines of code and prints one allowed and one denied call."""
    quickstart = _python_blocks()[0]
    code_lines = [line for line in quickstart.splitlines() if line.strip()]
    assert len(code_lines) < 15
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "opened 'VPN down' for emea"
    assert lines[1].startswith("denied by agentguard (predicate_failed, decision dec_")
    assert not (tmp_path / ".agentguard").exists()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AGENTGUARD_", "OTEL_"))}


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_quickstart_writes_nothing_and_its_log_is_read_in_process(tmp_path: Path) -> None:
    """Run where a state directory and policy exist: nothing there changes, and the
    quickstart's audit line prints the refusal's explanation, as the README says."""
    init = subprocess.run(
        [str(AGENTGUARD), "init", "--org", "org:acme"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    before = _files(tmp_path)
    blocks = _python_blocks()
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0] + blocks[1])
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    script.unlink()
    assert _files(tmp_path) == before
    explanation = out.stdout.splitlines()[2]
    shown = blocks[1].split("# ", 1)[1].strip().removesuffix("...")
    assert explanation.startswith(shown), (explanation, shown)


def test_a_guard_with_a_state_directory_is_read_by_audit_tail(tmp_path: Path) -> None:
    """After 'agentguard init', Guard() there writes .agentguard/state.db; audit tail shows it."""
    env = _clean_env()
    init = subprocess.run(
        [str(AGENTGUARD), "init", "--org", "org:acme"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    script = tmp_path / "on_disk.py"
    script.write_text(
        "from agentguard import Delegation, Guard, Identity, Rule\n"
        "from agentguard.keys import Keyring\n"
        "org = Keyring(__import__('pathlib').Path('.agentguard/keys')).identity('org:acme')\n"
        "bot = Identity.generate('agent:support-bot')\n"
        "guard = Guard()\n"
        "grant = Delegation.issue(org, bot, [Rule('tickets/open_ticket')], ttl='1h')\n"
        "print(guard.check(grant, 'tickets/close', {}, holder=bot).id)\n"
    )
    ran = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / ".agentguard" / "state.db").is_file()
    tail = subprocess.run(
        [str(AGENTGUARD), "audit", "tail", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    assert ran.stdout.strip() in {r["decision_id"] for r in json.loads(tail.stdout)}


def test_activating_the_venv_puts_agentguard_on_path(tmp_path: Path) -> None:
    """'. .venv/bin/activate' makes 'agentguard' the one in .venv/bin/, as the README says."""
    assert "`. .venv/bin/activate`\nputs `agentguard` on your PATH" in README
    env = {**_clean_env(), "PATH": "/usr/bin:/bin"}
    bare = subprocess.run(
        ["/bin/sh", "-c", "command -v agentguard"], env=env, capture_output=True, text=True
    )
    assert bare.returncode != 0  # not there before
    found = subprocess.run(
        ["/bin/sh", "-c", f". {shlex.quote(str(AGENTGUARD.with_name('activate')))} && "
         "command -v agentguard && agentguard --version"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0] == str(AGENTGUARD)
    assert found.stdout.splitlines()[1].startswith("agentguard ")


def test_python_guides_run(tmp_path: Path) -> None:
    """The quickstart followed by every other Python block of the README runs cleanly."""
    script = tmp_path / "guides.py"
    script.write_text("\n".join(_python_blocks()))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "allow (allowed): every link admits tickets/open_ticket" in out.stdout


def test_mcp_client_entry_is_the_tested_one() -> None:
    """The README's MCP client entry is the one tests/adapters/mcp/test_readme.py runs."""
    adapter = (ROOT / "adapters" / "mcp" / "README.md").read_text(encoding="utf-8")
    ours = [b for b in re.findall(r"```json\n(.*?)```", README, re.S) if "mcpServers" in b]
    tested = [b for b in re.findall(r"```json\n(.*?)```", adapter, re.S) if '"agentguard"' in b]
    assert ours
    assert ours[0] in tested


def _shell_block(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_approvals_guide_runs_as_written(tmp_path: Path) -> None:
    """The three commands of the Approvals guide work on a fresh home, in order."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AGENTGUARD), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    assert run("init", "--org", "org:acme").returncode == 0
    for principal in ("user:alice", "agent:log-collector"):
        assert run("identity", "new", principal).returncode == 0
    granted = run(
        "grant", "--from", "org:acme", "--to", "agent:log-collector", "--tool", "hosts/*",
        "--approval", "hosts/*", "--ttl", "1h", "-o", "agent.dlg",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    policy = tmp_path / "agentguard.yaml"
    policy.write_text(
        policy.read_text().replace(
            "approvers: []", 'approvers:\n  - id: user:alice\n    tools: ["hosts/*"]'
        )
    )
    request_id = ""
    expected = [4, 0, 0]
    for line, code in zip(_shell_block("### Approvals"), expected, strict=True):
        words = shlex.split(line.replace("apr_...", request_id))
        assert words[0] == "agentguard"
        done = run(*words[1:])
        assert done.returncode == code, (line, done.stdout, done.stderr)
        found = re.search(r"apr_[A-Za-z0-9_-]+", done.stdout + done.stderr)
        if found and not request_id:
            request_id = found.group(0)
    after = run("check", "agent.dlg", "hosts/quarantine", '{"host": "web-7"}')
    assert after.returncode == 0, after.stdout
    assert "approved by user:alice" in after.stdout


def _cli_forms() -> list[list[str]]:
    """Every `agentguard ...` command of the CLI reference table, as the words before options."""
    forms: list[list[str]] = []
    for row in re.findall(r"^\| (`agentguard .*?`) \|", README, re.M):
        group: list[str] = []
        for variant in re.findall(r"`([^`]*)`", row):
            words = [w for w in variant.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
            if words and words[0] == "agentguard":
                group = words[1:2]
                forms.append(words[1:3])
            elif words and group:
                forms.append([*group, *[w for w in words if w not in group][:1]])
    return forms


@pytest.mark.parametrize("words", _cli_forms(), ids=" ".join)
def test_cli_reference_commands_exist(words: list[str], tmp_path: Path) -> None:
    """Each command form in the CLI reference answers --help."""
    out = subprocess.run(
        [str(AGENTGUARD), *words, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, (words, out.stderr)
    assert "Usage" in out.stdout


def _section(heading: str) -> str:
    return README.split(heading, 1)[1].split("\n### ", 1)[0]


def test_predicate_examples_answer_as_written() -> None:
    """Each line of the README's predicate example table is what evaluate() answers."""
    import json

    from agentguard.predicates import compile_predicate, evaluate

    block = re.search(r"```text\n(.*?)```", _section("### Argument predicates"), re.S)
    assert block is not None
    rows = block.group(1).splitlines()[1:]
    assert len(rows) >= 8
    decoder = json.JSONDecoder()
    for row in rows:
        where, end = decoder.raw_decode(row)
        args, end2 = decoder.raw_decode(row, end + len(row[end:]) - len(row[end:].lstrip()))
        answer = row[end2:].strip()
        assert evaluate(compile_predicate(where), args).value == answer, row


def test_predicate_guide_idiom_behaves_as_written() -> None:
    """The "free up to 100, approval above" scope: free, approval, and unknown is refused."""
    from agentguard import Delegation, Guard, Identity, Rule

    code = re.findall(r"```python\n(.*?)```", _section("### Argument predicates"), re.S)[0]
    namespace: dict[str, object] = {"Rule": Rule}
    exec(code, namespace)  # noqa: S102 - the README's own example
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    guard = Guard(trusted_roots=[org.principal])
    grant = Delegation.issue(org, bot, namespace["scope"], ttl="1h")  # type: ignore[arg-type]

    def outcome(amount: object) -> str:
        return guard.check(grant, "billing/refund", {"amount": amount}, holder=bot).outcome

    assert (outcome(50), outcome(5000), outcome("50")) == ("allow", "approval_required", "deny")
