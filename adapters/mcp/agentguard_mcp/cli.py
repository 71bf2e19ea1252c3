"""``agentguard mcp ...``: the proxy's command line (added to the core CLI by entry point).

    agentguard mcp proxy --delegation FILE --as ID --namespace NAME [--home DIR]
                         [--policy FILE] [--timeout S] [--max-result-bytes N]
                         [--store-timeout S] -- COMMAND [ARGS...]
    agentguard mcp proxy --config FILE [--home DIR] [--http HOST:PORT] [--store-timeout S]
                         [--resource URI --issuer URL ...]

The namespace of an upstream (the ``NAME`` in ``NAME/tool`` addresses) is the
operator's: ``--namespace`` or a key under ``upstreams:`` in the configuration
file, never the name a server reports about itself. Over stdio the standard
output is the MCP channel: every message goes to standard error. Exit codes
follow the core CLI: 1 error, 2 usage, 3 denied.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import anyio
import typer
from mcp.shared.exceptions import MCPError

from agentguard.approval import QueueChannel
from agentguard.errors import AgentGuardError, ConfigError, DeniedError
from agentguard.guard import POLICY_FILE, Guard
from agentguard.keys import Keyring
from agentguard.policy import Policy, load_policy
from agentguard.resolve import resolve_home
from agentguard_mcp.config import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_TIMEOUT,
    MAX_STORE_TIMEOUT,
    ProxyConfig,
    UpstreamSpec,
    check_result_limit,
    check_timeout,
    load_config,
    validate_namespace,
)
from agentguard_mcp.oauth import Provider, ResourceServer
from agentguard_mcp.proxy import Caller, GuardedProxy, granted_namespaces
from agentguard_mcp.serve import policy_federation, serve_http, serve_stdio
from agentguard_mcp.upstream import Upstream

__all__ = ["app", "main"]

app = typer.Typer(
    name="mcp",
    help="Gate MCP servers: a proxy that checks every tool call against the caller's delegation.",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_ERROR, EXIT_USAGE, EXIT_DENIED = 1, 2, 3


@app.callback()
def _group() -> None:
    """Gate MCP servers behind agentguard."""


def _say(text: str) -> None:
    sys.stderr.write(f"agentguard mcp: {text}\n")
    sys.stderr.flush()


class _StderrLines(logging.Handler):
    """Log records as one ``agentguard mcp: ...`` line each on the current stderr.

    The message only, never a traceback: the MCP SDK logs an upstream's
    unparsable output with the exception, whose text quotes that output.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.name != "agentguard_mcp":
                text = f"{record.name}: {text}"
            _say(text)
        except Exception:  # noqa: BLE001 - a log line must never break serving
            self.handleError(record)


def _log_to_stderr() -> None:
    """Show the proxy's warnings (an upstream lost, reconnected, a tool redefined) on stderr.

    The SDK's own warnings (``mcp``) go there too, one line each.
    """
    for name in ("agentguard_mcp", "mcp"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrLines) for h in logger.handlers):
            logger.addHandler(_StderrLines(logging.WARNING))


def _home(option: str | None, config: ProxyConfig | None, policy: str | None) -> Path:
    """The state directory, resolved as every agentguard command resolves it."""
    explicit = option or (config.home if config is not None else None)
    source = policy or (POLICY_FILE if Path(POLICY_FILE).is_file() else None)
    loaded = load_policy(source) if source else Policy()
    home = resolve_home(explicit, loaded, only_existing_default=False)
    assert home is not None  # noqa: S101 (only_existing_default=False always names one)
    return home


def build_guard(home: Path, policy: str | None, *, store_timeout: float | None = None) -> Guard:
    """The guard the proxy decides with: state under ``home``, approvals queued out of band.

    ``store_timeout`` (seconds) replaces the policy's ``storage.busy_timeout``:
    how long a call waits while another process holds a lock on the state
    file before it is refused with ``store_error``.

    Raises:
        ConfigError: the policy or a key cannot be loaded.
        StoreError: the store cannot be opened.
    """
    source = policy or (POLICY_FILE if Path(POLICY_FILE).is_file() else None)
    loaded = load_policy(source) if source else Policy()
    if store_timeout is not None:
        storage = loaded.storage.model_copy(update={"busy_timeout": store_timeout})
        loaded = loaded.model_copy(update={"storage": storage})
    return Guard(
        policy=loaded,
        home=home,
        approver=QueueChannel(announce=lambda r: _say(f"approval pending, id={r.id} ({r.tool})")),
        approval_mode="raise",
        enforcement_point="mcp_proxy",
    )


@app.command("repin")
def repin_command(
    tools: Annotated[
        list[str], typer.Argument(help="Tool addresses to pin afresh, e.g. crm/lookup.")
    ],
    home: Annotated[
        str | None, typer.Option("--home", help="State directory (default ./.agentguard).")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Policy file.")] = None,
) -> None:
    """Accept the current definitions of changed tools: forget their pins in the store.

    Every proxy on this store (a restarted one, another replica on the same
    database) pins the definition it lists next, instead of refusing the tool
    as ``tool_changed``.
    """
    try:
        guard = build_guard(_home(home, None, policy), policy)
    except AgentGuardError as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    try:
        unpin = getattr(guard.store, "unpin_tools", None)
        if unpin is None:
            _say(f"store {guard.store.location} keeps no tool pins")
            raise typer.Exit(EXIT_ERROR)
        removed = unpin(tools)
    except AgentGuardError as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        guard.close()
    typer.echo(f"forgot {removed} of {len(set(tools))} pins; the next listing pins them afresh")


def _parse_http(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter("use HOST:PORT, e.g. 127.0.0.1:8765", param_hint="--http")
    return host.strip("[]"), int(port)


@app.command(
    "proxy",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def proxy_command(
    command: Annotated[
        list[str] | None, typer.Argument(help="The upstream stdio server, after '--'.")
    ] = None,
    delegation: Annotated[
        Path | None, typer.Option("--delegation", help="File holding the agent's delegation.")
    ] = None,
    holder: Annotated[
        str | None, typer.Option("--as", help="The holder identity in the keyring, e.g. agent:bot.")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="Namespace of the upstream: delegations name its tools NAME/tool (required).",
        ),
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="YAML file listing several upstreams.")
    ] = None,
    home: Annotated[
        str | None, typer.Option("--home", help="State directory (default ./.agentguard).")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Policy file.")] = None,
    http: Annotated[
        str | None, typer.Option("--http", help="Serve streamable HTTP on HOST:PORT.")
    ] = None,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Believe the upstream's tool annotations.")
    ] = False,
    aware: Annotated[
        bool,
        typer.Option("--agentguard-aware", help="Forward delegation and call token upstream."),
    ] = False,
    approver: Annotated[
        str | None,
        typer.Option("--approver", help="The user who answers approval forms in the MCP client."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds to wait for the upstream's answer to a call "
            f"(default {DEFAULT_TIMEOUT:g}).",
        ),
    ] = None,
    max_result_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-result-bytes",
            help="Largest answer read from the upstream, in bytes "
            f"(default {DEFAULT_MAX_RESULT_BYTES}).",
        ),
    ] = None,
    store_timeout: Annotated[
        float | None,
        typer.Option(
            "--store-timeout",
            help="Seconds a call waits for a state file another process has locked "
            "(default: the policy's storage.busy_timeout).",
        ),
    ] = None,
    resource: Annotated[
        str | None,
        typer.Option(
            "--resource",
            help="Over HTTP, also accept OAuth access tokens for this resource URI "
            "(the proxy's public URL, e.g. https://mcp.example.com/mcp); default: the "
            "audience of the policy's federation: section.",
        ),
    ] = None,
    issuers: Annotated[
        list[str] | None,
        typer.Option(
            "--issuer",
            help="An identity provider (OIDC issuer URL) whose access tokens are accepted "
            "for --resource, without a federation: section (its callers reach no tool); "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """Run the gating proxy in front of one stdio server or the servers of a config file."""
    if config_file is not None and command:
        raise typer.BadParameter("give either --config or a command after '--', not both")
    single = (namespace, approver, timeout, max_result_bytes)
    if config_file is not None and (trusted or aware or any(v is not None for v in single)):
        raise typer.BadParameter(
            "--namespace, --trusted, --agentguard-aware, --approver, --timeout and "
            "--max-result-bytes describe a single upstream; with --config, set them in the "
            "configuration file"
        )
    try:
        config = load_config(config_file) if config_file is not None else None
    except AgentGuardError as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_USAGE) from exc
    if config is None:
        if not command:
            raise typer.BadParameter("give the upstream command after '--', or --config FILE")
        if http is None and (delegation is None or holder is None):
            raise typer.BadParameter("serving stdio needs --delegation FILE and --as ID")
        if namespace is None:
            # Never the upstream's self-reported name: a server calling itself
            # "time" would get the authority delegations give to time/*.
            raise typer.BadParameter(
                "add --namespace NAME: the namespace delegations and policy use for this "
                "upstream's tools (NAME/tool); it is not taken from the server's own name",
                param_hint="--namespace",
            )
        try:
            validate_namespace(namespace)
            wait = check_timeout(DEFAULT_TIMEOUT if timeout is None else timeout, "--timeout")
            largest = check_result_limit(
                DEFAULT_MAX_RESULT_BYTES if max_result_bytes is None else max_result_bytes,
                "--max-result-bytes",
            )
        except AgentGuardError as exc:
            raise typer.BadParameter(str(exc)) from exc
        specs: tuple[UpstreamSpec, ...] = (
            UpstreamSpec(
                namespace=namespace,
                command=tuple(command),
                trusted=trusted,
                agentguard=aware,
                timeout=wait,
                max_result_bytes=largest,
            ),
        )
        config = ProxyConfig(upstreams=specs, policy=policy, elicitation_approver=approver)
    else:
        delegation = delegation or (Path(config.delegation) if config.delegation else None)
        holder = holder or config.holder
    if store_timeout is not None:
        try:
            check_timeout(store_timeout, "--store-timeout", maximum=MAX_STORE_TIMEOUT)
        except AgentGuardError as exc:
            raise typer.BadParameter(str(exc)) from exc
    else:
        store_timeout = config.store_timeout
    oauth = _resource_server(resource, issuers or [], http)
    try:
        state = _home(home, config, policy or config.policy)
    except AgentGuardError as exc:
        _say(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    _log_to_stderr()
    _configure_telemetry(stdio=http is None)
    try:
        code = anyio.run(
            _run,
            config,
            state,
            policy or config.policy,
            delegation,
            holder,
            http,
            store_timeout,
            oauth,
            resource,
        )
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _resource_server(
    resource: str | None, issuers: list[str], http: str | None
) -> ResourceServer | None:
    """The OAuth protected resource of ``--resource``/``--issuer`` (None without --issuer).

    Raises:
        typer.BadParameter: --issuer without --resource, either without --http, or a URL
            that is not https (or http on loopback).
    """
    if resource is None and not issuers:
        return None
    if http is None:
        raise typer.BadParameter("--resource and --issuer need --http HOST:PORT")
    if resource is None:
        raise typer.BadParameter("--issuer needs --resource URI")
    if not issuers:
        return None
    try:
        return ResourceServer(resource, [Provider(issuer, resource) for issuer in issuers])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _configure_telemetry(*, stdio: bool) -> None:
    """Export spans when the standard OTEL_* variables ask for it (DESIGN §8).

    Over stdio, stdout is the MCP channel: a console exporter would corrupt it,
    so only OTLP is accepted there.
    """
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if wanted in ("", "none") and not endpoint:
        return
    if stdio and "console" in wanted:
        _say("OTEL_TRACES_EXPORTER=console would corrupt the stdio channel; spans not exported")
        return
    try:
        from agentguard import telemetry

        telemetry.configure(exporter=None if wanted else "otlp", service_name="agentguard-mcp")
    except AgentGuardError as exc:
        _say(f"tracing not configured: {exc}")


async def _run(
    config: ProxyConfig,
    home: Path,
    policy: str | None,
    delegation_file: Path | None,
    holder_id: str | None,
    http: str | None,
    store_timeout: float | None = None,
    oauth: ResourceServer | None = None,
    resource: str | None = None,
) -> int:
    try:
        guard = build_guard(home, policy, store_timeout=store_timeout)
        caller = None
        if http is None:
            if delegation_file is None or holder_id is None:
                _say("serving stdio needs a delegation and a holder (--delegation, --as)")
                return EXIT_USAGE
            text = delegation_file.read_text(encoding="utf-8").strip()
            holder = Keyring(home / "keys").identity(holder_id)
            caller = Caller(text, holder=holder)
    except OSError as exc:
        _say(f"cannot read the delegation: {exc.strerror or exc}")
        return EXIT_ERROR
    except AgentGuardError as exc:
        _say(str(exc))
        return EXIT_ERROR
    async with AsyncExitStack() as stack:
        upstreams = [Upstream(spec) for spec in config.upstreams]
        for upstream in upstreams:
            try:
                await upstream.connect(stack)
            except Exception as exc:  # noqa: BLE001 - any failure to start or reach an upstream stops the proxy
                _say(start_failure(upstream.spec, exc))
                return EXIT_ERROR
        proxy = GuardedProxy(
            guard,
            upstreams,
            caller=caller,
            annotation_step_up=config.annotation_step_up,
            annotation_assurance=config.annotation_assurance,
            elicitation_approver=config.elicitation_approver,
            approval_page=config.approval_page,
        )
        try:
            await proxy.load_pins()
            proxy.rebuild(strict=True)
        except ConfigError as exc:
            _say(str(exc))
            return EXIT_ERROR
        if caller is not None:
            try:
                chain = proxy.verified_chain(caller.delegation)
            except DeniedError as exc:
                _say(f"the delegation is refused: {exc.short}: {exc.explanation}")
                return EXIT_DENIED
            # The holder first: a key that does not hold the delegation is the
            # real problem, whatever the delegation reaches.
            if caller.holder is None or chain.holder != caller.holder.principal:
                _say(f"{holder_id} is not the holder of this delegation ({chain.holder.id})")
                return EXIT_DENIED
            if not proxy.reachable_namespaces(chain):
                named = granted_namespaces(chain)
                _say(
                    "the delegation reaches none of this proxy's namespaces "
                    f"({', '.join(proxy.namespaces)}); it reaches "
                    + (", ".join(named) if named else "no namespace at all")
                    + " (the namespace is the --namespace NAME of the upstream, or its key "
                    "under 'upstreams:' in --config)"
                )
                return EXIT_DENIED
            await serve_stdio(proxy)
        else:
            assert http is not None  # noqa: S101 - narrowed above
            host, port = _parse_http(http)
            try:
                federated = policy_federation(proxy, resource)
            except ConfigError as exc:
                _say(str(exc))
                return EXIT_ERROR
            federate = None
            if federated is not None:
                if oauth is not None:
                    _say(
                        "the policy's federation: section names the identity providers; "
                        "drop --issuer"
                    )
                    return EXIT_USAGE
                oauth, federate = federated
            elif resource is not None and oauth is None:
                _say("--resource needs --issuer URL or a federation: section in the policy")
                return EXIT_USAGE
            if oauth is not None:
                await stack.enter_async_context(oauth)
            await serve_http(
                proxy,
                host,
                port,
                on_ready=lambda: _say(f"listening on http://{host}:{port}/mcp"),
                oauth=oauth,
                federate=federate,
            )
    return 0


def start_failure(spec: UpstreamSpec, exc: BaseException) -> str:
    """Why an upstream did not start, naming what the operator configured.

    A command is named by its program (an argument might be a secret); a URL
    by its scheme, host and port only (it may carry credentials). The
    exception's own text is never shown, for the same reason.
    """
    cause = _innermost(exc)
    if spec.command is not None:
        program = spec.command[0]
        if isinstance(cause, FileNotFoundError):
            why = "no such program (check the command's spelling and PATH)"
        elif isinstance(cause, PermissionError):
            why = "not executable (permission denied)"
        else:
            why = f"it did not complete the MCP handshake ({_kind(cause)})"
        return f"cannot start upstream {spec.namespace!r}: command {program!r}: {why}"
    assert spec.url is not None  # noqa: S101 - UpstreamSpec guarantees one of the two
    parts = urlsplit(spec.url)
    where = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return f"cannot reach upstream {spec.namespace!r} at {where}: {_kind(cause)}"


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _kind(exc: BaseException) -> str:
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}"
    return type(exc).__name__


def main() -> None:
    """Run the ``mcp`` command group on its own (``python -m agentguard_mcp``)."""
    app(prog_name="agentguard mcp")
