"""The proxy's configuration: which upstream MCP servers it fronts, and how far it trusts them.

A YAML file (``agentguard mcp proxy --config FILE``) looks like::

    home: .agentguard            # optional; --home wins
    policy: agentguard.yaml      # optional; --policy wins
    delegation: agent.delegation # stdio serving only: the agent's delegation file
    as: agent:support-bot        # stdio serving only: the holder identity in the keyring
    upstreams:
      time:                      # the namespace: delegations say time/<tool>
        command: [mcp-server-time, --local-timezone, UTC]
        env: {TZ: UTC}
        trusted: true            # believe its tool annotations
        timeout: 120             # seconds to wait for one call's answer (default 120)
        max_result_bytes: 16777216  # refuse larger answers (default 16 MiB; stdio only)
      tickets:
        url: http://127.0.0.1:9000/mcp
        headers: {X-Api-Key: ...} # the proxy's own credentials for that upstream
        agentguard: true         # it verifies delegations itself (agentguard_mcp.verify)
    annotation_step_up: true     # destructive tools need approval (default)
    annotation_assurance: local  # ... at this assurance (default local)
    elicitation_approver: user:alice  # who answers approval forms in the MCP client
    approval_page: http://127.0.0.1:8780/  # where 'agentguard approvals serve' listens:
                                 # named to callers (URL-mode elicitation) when its answers count
    store_timeout: 5             # seconds a call may wait for a locked state file
                                 # (default: the policy's storage.busy_timeout)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentguard.errors import ConfigError
from agentguard.policy import ASSURANCE_LEVELS, load_strict_yaml
from agentguard_mcp._names import ambiguous_namespaces

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_STORE_TIMEOUT",
    "NAMESPACE_RE",
    "ProxyConfig",
    "UpstreamSpec",
    "check_namespaces",
    "check_result_limit",
    "check_timeout",
    "load_config",
    "validate_namespace",
]

#: Namespaces become the first part of tool addresses and of client-visible names.
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")

_UPSTREAM_KEYS = {
    "command",
    "env",
    "cwd",
    "url",
    "headers",
    "trusted",
    "agentguard",
    "timeout",
    "max_result_bytes",
}
#: Seconds the proxy waits for an upstream's answer to one request.
DEFAULT_TIMEOUT = 120.0
#: Largest upstream message (one JSON-RPC line or HTTP body) the proxy reads.
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024

_TOP_KEYS = {
    "home",
    "policy",
    "delegation",
    "as",
    "upstreams",
    "annotation_step_up",
    "annotation_assurance",
    "elicitation_approver",
    "approval_page",
    "store_timeout",
}

#: The longest approval page address accepted.
MAX_PAGE_URL = 2048
# http(s), a host (no user:password@), nothing but printable ASCII and no whitespace.
_PAGE_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?:/[\x21-\x7e]*)?")


def check_page_url(value: object) -> str:
    """Return ``value`` if it can be shown to callers as the approval page's address.

    Raises:
        ConfigError: not an http(s) address of printable ASCII without credentials.
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_PAGE_URL
        or _PAGE_URL.fullmatch(value) is None
    ):
        raise ConfigError(
            "'approval_page' must be an http:// or https:// address such as "
            "http://127.0.0.1:8780/ (printable ASCII, no user or password)"
        )
    return value


def validate_namespace(name: object) -> str:
    """Return ``name`` if it can serve as a namespace.

    Raises:
        ConfigError: the name is not 1-32 letters, digits, ``_`` or ``-``, or contains ``__``.
    """
    if not isinstance(name, str) or not NAMESPACE_RE.match(name) or "__" in name:
        raise ConfigError(
            f"invalid namespace {str(name)[:40]!r}: use 1-32 letters, digits, '_' or '-' "
            "(starting with a letter or digit, no '__')"
        )
    return name


def check_namespaces(namespaces: Sequence[str]) -> None:
    """Refuse namespaces that could give two tools one client-facing name.

    Raises:
        ConfigError: naming both namespaces (e.g. ``a_`` and ``a``).
    """
    pair = ambiguous_namespaces(namespaces)
    if pair is not None:
        first, second = pair
        raise ConfigError(
            f"namespaces {first!r} and {second!r} can give two tools the same client-facing "
            f"name ('{first}__' + tool and '{second}__' + tool overlap); rename one of them"
        )


def check_timeout(value: object, where: str, *, maximum: float = 86400) -> float:
    """Return ``value`` if it is a usable number of seconds (above 0, at most ``maximum``).

    Raises:
        ConfigError: naming ``where``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= maximum  # also refuses NaN
    ):
        raise ConfigError(f"{where} must be a number of seconds above 0 and at most {maximum:g}")
    return float(value)


#: The longest a call may wait for the state file (the store's own ceiling).
MAX_STORE_TIMEOUT = 600.0


def check_result_limit(value: object, where: str) -> int:
    """Return ``value`` if it is a usable message size limit in bytes (1 KiB to 1 GiB).

    Raises:
        ConfigError: naming ``where``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 30:
        raise ConfigError(f"{where} must be a whole number of bytes from 1024 to 1073741824")
    return value


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream MCP server: a stdio command or a streamable-HTTP URL.

    Attributes:
        namespace: the namespace its tools live in (``namespace/tool``).
        command: the argv of a stdio server, or ``None``.
        url: the streamable-HTTP endpoint, or ``None``.
        env: extra environment for a stdio server (``OTEL_*`` is added by the proxy).
        cwd: working directory of a stdio server.
        headers: HTTP headers the proxy itself sends to a URL upstream.
        trusted: whether its tool annotations are believed (otherwise every tool
            counts as destructive).
        agentguard: whether it verifies delegations itself; only such upstreams
            receive the delegation and a call token in ``_meta``.
        timeout: seconds to wait for its answer to one request; a call that
            gets none in time is refused (``upstream_unavailable``).
        max_result_bytes: the largest message the proxy reads from a stdio
            upstream; a larger answer is dropped unread and the call refused
            (``oversized``). Not applied to URL upstreams yet.
    """

    namespace: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    trusted: bool = False
    agentguard: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        check_timeout(self.timeout, f"upstream {self.namespace}: timeout")
        check_result_limit(self.max_result_bytes, f"upstream {self.namespace}: max_result_bytes")
        if (self.command is None) == (self.url is None):
            raise ConfigError(f"upstream {self.namespace}: give exactly one of command or url")
        if self.command is not None and not self.command:
            raise ConfigError(f"upstream {self.namespace}: command must not be empty")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ConfigError(f"upstream {self.namespace}: url must start with http:// or https://")


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the proxy needs besides the caller: upstreams and where state lives."""

    upstreams: tuple[UpstreamSpec, ...]
    home: str | None = None
    policy: str | None = None
    delegation: str | None = None
    holder: str | None = None
    annotation_step_up: bool = True
    annotation_assurance: str = "local"
    elicitation_approver: str | None = None
    #: The approval page's address, named to callers whose request it can answer.
    approval_page: str | None = None
    #: Seconds a call may wait for the state file while another process holds
    #: a lock (``None``: the policy's ``storage.busy_timeout``).
    store_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.store_timeout is not None:
            check_timeout(self.store_timeout, "store_timeout", maximum=MAX_STORE_TIMEOUT)
        if self.annotation_assurance not in ASSURANCE_LEVELS:
            raise ConfigError(f"annotation_assurance must be one of {', '.join(ASSURANCE_LEVELS)}")
        if not self.upstreams:
            raise ConfigError("the proxy needs at least one upstream")
        seen: set[str] = set()
        for spec in self.upstreams:
            if spec.namespace in seen:
                raise ConfigError(f"namespace {spec.namespace} is configured twice")
            seen.add(spec.namespace)
        check_namespaces(self.namespaces)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces of every upstream, in configuration order."""
        return tuple(spec.namespace for spec in self.upstreams)


def _str_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()
    ):
        raise ConfigError(f"{where} must map names to strings")
    return {k: str(v) for k, v in value.items()}


def _upstream(namespace: object, raw: object, base: Path) -> UpstreamSpec:
    where = f"upstreams.{namespace}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(raw) - _UPSTREAM_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    command = raw.get("command")
    if isinstance(command, str):
        command = command.split()
    if command is not None and (
        not isinstance(command, list) or not all(isinstance(p, str) for p in command)
    ):
        raise ConfigError(f"{where}.command must be a list of strings")
    url = raw.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{where}.url must be a string")
    for flag in ("trusted", "agentguard"):
        if not isinstance(raw.get(flag, False), bool):
            raise ConfigError(f"{where}.{flag} must be true or false")
    cwd = raw.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{where}.cwd must be a string")
    return UpstreamSpec(
        namespace=validate_namespace(namespace),
        command=tuple(command) if command is not None else None,
        url=url,
        env=_str_map(raw.get("env"), f"{where}.env"),
        cwd=str(base / cwd) if cwd is not None else None,
        headers=_str_map(raw.get("headers"), f"{where}.headers"),
        trusted=bool(raw.get("trusted", False)),
        agentguard=bool(raw.get("agentguard", False)),
        timeout=check_timeout(raw.get("timeout", DEFAULT_TIMEOUT), f"{where}.timeout"),
        max_result_bytes=check_result_limit(
            raw.get("max_result_bytes", DEFAULT_MAX_RESULT_BYTES), f"{where}.max_result_bytes"
        ),
    )


def config_from_mapping(data: Mapping[str, Any], *, base: Path | None = None) -> ProxyConfig:
    """Build a configuration from parsed YAML/JSON (relative paths resolve against ``base``).

    Raises:
        ConfigError: the configuration is invalid.
    """
    base = base or Path.cwd()
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r} at the top level")
    upstreams = data.get("upstreams")
    if not isinstance(upstreams, dict) or not upstreams:
        raise ConfigError("'upstreams' must map namespaces to upstream servers")

    def path(key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string")
        return str(base / value)

    step_up = data.get("annotation_step_up", True)
    if not isinstance(step_up, bool):
        raise ConfigError("'annotation_step_up' must be true or false")
    assurance = data.get("annotation_assurance", "local")
    approver = data.get("elicitation_approver")
    if approver is not None and not isinstance(approver, str):
        raise ConfigError("'elicitation_approver' must be a principal id such as user:alice")
    holder = data.get("as")
    if holder is not None and not isinstance(holder, str):
        raise ConfigError("'as' must be a principal id such as agent:support-bot")
    return ProxyConfig(
        upstreams=tuple(_upstream(ns, raw, base) for ns, raw in upstreams.items()),
        home=path("home"),
        policy=path("policy"),
        delegation=path("delegation"),
        holder=holder,
        annotation_step_up=step_up,
        annotation_assurance=str(assurance),
        elicitation_approver=approver,
        approval_page=(
            None if data.get("approval_page") is None else check_page_url(data["approval_page"])
        ),
        store_timeout=(
            None
            if data.get("store_timeout") is None
            else check_timeout(data["store_timeout"], "'store_timeout'", maximum=MAX_STORE_TIMEOUT)
        ),
    )


def load_config(path: str | Path) -> ProxyConfig:
    """Read a proxy configuration file (YAML).

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    # Duplicate keys refused: a second 'trusted:' or 'annotation_step_up:' would
    # silently decide whether destructive tools need approval.
    data = load_strict_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    try:
        return config_from_mapping(data, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
