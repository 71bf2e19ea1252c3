"""The ``agentguard`` command line (Typer + Rich).

Exit codes: 0 allow/success, 1 error, 2 usage, 3 denied (including malformed or
forged input), 4 approval required. ``--json`` output goes to stdout alone;
messages go to stderr. Every error is one line, never a traceback.

Adapters add command groups through the ``agentguard.cli`` entry point group:
each entry point names a ``typer.Typer`` that is added under the entry point's
name. A plugin that fails to load is skipped with a warning on stderr.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup, TyperOption

from agentguard import __version__
from agentguard.cli import approvals, audit, db, grants, identity, keys, policy
from agentguard.cli._common import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_USAGE,
    Settings,
    fail,
)
from agentguard.cli.check import check_command
from agentguard.cli.demo import demo_command
from agentguard.cli.grant import grant_command
from agentguard.cli.init import init_command
from agentguard.cli.inspect import inspect_command
from agentguard.cli.login import login_command
from agentguard.cli.revoke import revoke_command
from agentguard.errors import AgentGuardError, DeniedError

__all__ = ["PLUGIN_GROUP", "app", "main", "plugin_commands"]

PLUGIN_GROUP = "agentguard.cli"


#: Names a plugin may not take.
_CORE = frozenset(
    {
        "init",
        "identity",
        "grant",
        "inspect",
        "check",
        "revoke",
        "policy",
        "grants",
        "audit",
        "approvals",
        "demo",
        "db",
        "keys",
        "login",
    }
)


def _plain_flags(command: Any) -> None:
    """Show no value type for flags (``--json``, ``--help``) in ``command`` and below it.

    Typer labels every option with its type, so a flag read ``--json <bool>``
    as if it took a value. An empty metavar leaves the type column blank; a
    flag's metavar is used nowhere else.
    """
    help_option = command.get_help_option(command.context_class(command))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


class _Commands(TyperGroup):
    """The root group: loads plugins lazily and turns every error into one line and a code.

    Plugins are imported only when a command outside the core is asked for or
    the command list is shown, so core commands start fast.
    """

    _plugins_loaded = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_flags(self)

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for name, command in plugin_commands():
                _plain_flags(command)
                self.add_command(command, name)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugins()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: Any) -> list[str]:
        self._load_plugins()
        return list(super().list_commands(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:
            # Usage errors (click's UsageError family) exit 2 with one line.
            if getattr(exc, "exit_code", None) != EXIT_USAGE:
                raise
            missing_ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and missing_ctx is not None:
                _missing_command(missing_ctx)  # (Typer vendors click, so matched by name)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or "agentguard"
            fail(f"{message} (see '{where} --help')", EXIT_USAGE)
        except DeniedError as exc:
            fail(f"denied ({exc.reason}): {exc.explanation}", EXIT_DENIED)
        except AgentGuardError as exc:
            fail(str(exc), EXIT_ERROR)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # a closed pipe (| head): Typer exits quietly
            target = f"{exc.filename}: " if exc.filename else ""
            fail(f"{target}{exc.strerror or exc}", EXIT_ERROR)
        except Exception as exc:  # the last line of defence: never a traceback
            if os.environ.get("AGENTGUARD_DEBUG"):
                raise
            fail(
                f"unexpected {type(exc).__name__}: {exc} (set AGENTGUARD_DEBUG=1 for details)",
                EXIT_ERROR,
            )


def _missing_command(ctx: Any) -> NoReturn:
    """A group run without its subcommand: its help is out already; name what was missing."""
    names = ", ".join(ctx.command.list_commands(ctx))
    fail(
        f"missing command for '{ctx.command_path}': one of {names} "
        f"(see '{ctx.command_path} --help')",
        EXIT_USAGE,
    )


app = typer.Typer(
    name="agentguard",
    cls=_Commands,
    help="Govern AI agents' tool calls: signed delegations, per-call tokens, approval, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="AGENTGUARD_HOME",
            help="State directory (keys/, state.db); default ./.agentguard.",
            show_default=False,
        ),
    ] = None,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            envvar="AGENTGUARD_POLICY",
            help="Policy file; default ./agentguard.yaml.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Govern AI agents' tool calls: signed delegations, per-call tokens, approval, audit."""
    ctx.obj = Settings(home=home, policy=policy_file)


app.command("init")(init_command)
app.add_typer(identity.app, name="identity", no_args_is_help=True)
app.command("grant")(grant_command)
app.command("inspect")(inspect_command)
app.command("check")(check_command)
app.command("revoke")(revoke_command)
app.add_typer(policy.app, name="policy", no_args_is_help=True)
app.add_typer(grants.app, name="grants", no_args_is_help=True)
app.add_typer(audit.app, name="audit", no_args_is_help=True)
app.add_typer(approvals.app, name="approvals", no_args_is_help=True)
app.command("demo")(demo_command)
app.add_typer(db.app, name="db", no_args_is_help=True)
app.add_typer(keys.app, name="keys", no_args_is_help=True)
app.command("login")(login_command)


def plugin_commands(plugins: Iterable[EntryPoint] | None = None) -> list[tuple[str, Any]]:
    """Load every ``agentguard.cli`` entry point's Typer app as a command group.

    A plugin that cannot be loaded, is not a ``typer.Typer`` or clashes with a
    core command is skipped with a one-line warning on stderr.
    """
    loaded: list[tuple[str, Any]] = []
    found = entry_points(group=PLUGIN_GROUP) if plugins is None else plugins
    for entry in found:
        try:
            if entry.name in _CORE:
                raise ValueError("its name clashes with a core command")
            plugin = entry.load()
            if not isinstance(plugin, typer.Typer):
                raise TypeError(f"it is a {type(plugin).__name__}, not a typer.Typer")
            loaded.append((entry.name, typer.main.get_group(plugin)))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the core CLI
            typer.echo(
                f"warning: skipping CLI plugin {entry.name!r} ({entry.value}): "
                f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                err=True,
            )
    return loaded


def main() -> None:
    """Console-script entry point."""
    app()
