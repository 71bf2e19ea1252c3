"""The gate shared by :class:`GuardedTool` and the agent middleware.

One tool call goes through ``guard.call``/``guard.acall``. In interrupt mode an
:class:`agentguard.ApprovalPending` becomes a LangGraph ``interrupt`` carrying
the approval request; the human's answer (approve / reject / edit) is read on
resume, but only the guard's stored, signed approval lets the call run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from agentguard import (
    AgentGuardError,
    ApprovalPending,
    Delegation,
    DeniedError,
    Identity,
    Reason,
)
from agentguard.approval import call_digest, pending_note
from agentguard.tokens import args_digest

if TYPE_CHECKING:
    from agentguard.approval import ApprovalRequest

log = logging.getLogger("agentguard_langchain")

__all__ = [
    "APPROVAL_MODES",
    "INTERRUPT_KIND",
    "AlreadyRan",
    "ApprovalMode",
    "Prepare",
    "Prepared",
    "ReviewerRejected",
    "ToolGate",
    "WaitingForApproval",
    "approval_payload",
    "parse_resume",
]

ApprovalMode = Literal["block", "interrupt"]
APPROVAL_MODES: tuple[ApprovalMode, ...] = ("block", "interrupt")

#: ``type`` of the value carried by the LangGraph interrupt, so a UI can tell ours apart.
INTERRUPT_KIND = "agentguard.approval"
#: How many times one tool call may pause for a reviewer (each edit files a new request).
MAX_REVIEW_ROUNDS = 4


class _Approvals(Protocol):
    def get(self, request_id: str) -> ApprovalRequest: ...

    def all(self) -> list[ApprovalRequest]: ...

    def who_may_approve(self, request: ApprovalRequest) -> list[str]: ...

    def how_to_answer(self, request: ApprovalRequest, approvers: Sequence[str]) -> str: ...


class _Channel(Protocol):
    @property
    def name(self) -> str: ...


class GuardAPI(Protocol):
    """What the adapter needs from :class:`agentguard.Guard`."""

    def spend_once(self, scope: str, key: str, *, ttl: float) -> bool: ...

    def was_spent(self, scope: str, key: str) -> bool: ...

    @property
    def approvals(self) -> _Approvals: ...

    @property
    def approval_mode(self) -> str: ...

    @property
    def channel(self) -> _Channel: ...

    def call(
        self,
        delegation: Delegation | str,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., Any],
        *,
        holder: Identity | None = ...,
        call_id: str | None = ...,
    ) -> Any: ...

    async def acall(
        self,
        delegation: Delegation | str,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., Any],
        *,
        holder: Identity | None = ...,
        call_id: str | None = ...,
    ) -> Any: ...


class ReviewerRejected(DeniedError):
    """The human reviewer rejected the call when resuming the interrupt.

    ``message`` is the reviewer's note for the model (written by a human for
    the model, so it is shown as is).
    """

    default_reason = Reason.APPROVAL_REJECTED

    def __init__(self, message: str | None, *, request_id: str, decision_id: str | None) -> None:
        super().__init__(
            f"the reviewer rejected approval request {request_id}", decision_id=decision_id
        )
        self.message = message
        self.request_id = request_id

    @property
    def short(self) -> str:
        note = f": {self.message}" if self.message else ""
        decision = f", decision {self.decision_id}" if self.decision_id else ""
        return f"rejected by the reviewer (approval_rejected{decision}){note}"


@dataclass(frozen=True)
class Resume:
    """A reviewer's answer as it came back through ``Command(resume=...)``. Untrusted."""

    action: Literal["approve", "reject", "edit"]
    message: str | None = None
    args: dict[str, Any] | None = None


def parse_resume(value: object) -> Resume:
    """Read a resume value: ``"approve"``, ``{"type": "reject", "message": ...}``,
    ``{"type": "edit", "args": {...}}``. Anything unreadable counts as a rejection.
    """
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        return Resume("reject", message=None)
    action = value.get("type", value.get("decision"))
    message = value.get("message")
    message = message if isinstance(message, str) else None
    if action in ("approve", "approved", "accept"):
        return Resume("approve", message=message)
    if action == "edit":
        args = value.get("args")
        if isinstance(args, Mapping):
            return Resume("edit", message=message, args=dict(args))
    return Resume("reject", message=message)


#: How a reviewer resumes the interrupted run once the request is answered.
RESUME_HOW = (
    'then resume with {"type": "approve"}, {"type": "reject", "message": "..."} '
    'or {"type": "edit", "args": {...}}'
)


def approval_payload(
    request: ApprovalRequest, pending: ApprovalPending, how: str | None = None
) -> dict[str, Any]:
    """What the interrupt shows a reviewer: no token, arguments redacted.

    The same facts every approval channel shows: the call, each link's stated
    purpose and sponsor with who asserted it, and who may not answer.
    ``how`` is the guard's line saying who can answer the request and through
    which channels (:meth:`agentguard.approval.ApprovalBook.how_to_answer`).
    """
    how = how or f"approve or deny it in the queue (agentguard approvals approve {request.id})"
    return {
        "type": INTERRUPT_KIND,
        "request_id": request.id,
        "decision_id": request.decision_id or pending.decision_id,
        "tool": request.tool,
        "args": request.args_display,
        "on_behalf_of": request.on_behalf_of,
        "requester": request.requester,
        "path": list(request.path),
        "rules": list(request.rules),
        "min_assurance": request.min_assurance,
        "deadline": request.deadline,
        "links": [link.to_json() for link in request.links or ()],
        "excluded_approvers": list(request.excluded),
        "description": request.describe(),
        # The full form of whatever the description folds (long values, long claims).
        "unfolded": request.unfolded(),
        "how_to_answer": f"{how}; {RESUME_HOW}",
    }


def _interrupt(payload: dict[str, Any]) -> object:
    try:
        from langgraph.types import interrupt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AgentGuardError(
            "approval='interrupt' needs LangGraph: pip install 'agentguard-langchain[agents]'"
        ) from exc
    return interrupt(payload)


@dataclass(frozen=True)
class Prepared:
    """One call ready to decide: the arguments the guard sees, and how to run exactly them.

    ``args`` is the JSON view of the values the tool will receive, after every
    validation and coercion of the tool's own schema; ``run`` runs the tool with
    those values and nothing else.
    """

    args: dict[str, Any]
    run: Callable[[], Any]
    #: The call as written (before parsing), to recognise a re-run of it; parsing may
    #: not give the same values twice (a ``default_factory``, say).
    origin: str = ""


#: Builds a :class:`Prepared` from raw arguments (a reviewer's edit, say).
Prepare = Callable[[Mapping[str, Any]], Prepared]


class _Mismatch(DeniedError):
    default_reason = Reason.UNDECIDED_ARGUMENTS


@dataclass(frozen=True)
class ToolGate:
    """Puts one tool call through the guard; shared by tools and middleware.

    Raises:
        ValueError: bad ``approval`` or ``namespace``, ``holder`` does not hold
            ``delegation``, or interrupt mode with a guard that does not raise
            :class:`agentguard.ApprovalPending` or has no approval channel
            (the message says what to pass).
    """

    guard: GuardAPI
    delegation: Delegation | str
    holder: Identity
    namespace: str
    approval: ApprovalMode = "block"

    def __post_init__(self) -> None:
        if self.approval not in APPROVAL_MODES:
            raise ValueError(f"approval must be one of {APPROVAL_MODES}, not {self.approval!r}")
        if not self.namespace or "/" in self.namespace:
            raise ValueError("namespace must be a non-empty name without '/'")
        leaf = self._parsed().leaf
        if self.holder.id != leaf.subject or self.holder.kid != leaf.subject_key.kid:
            # Fail at wiring time, not on the first call: only the leaf's key may sign calls.
            raise ValueError(
                f"{self.holder.id} does not hold this delegation (its holder is {leaf.subject})"
            )
        if self.approval == "interrupt":
            self._check_interruptible()

    def _check_interruptible(self) -> None:
        """An interrupt needs a guard that raises ApprovalPending (a blocking one would wait
        inside the graph) and keeps the request for an answer given elsewhere (with no
        channel, every approval-needing call is refused): say so once, with what to pass."""
        mode, channel = self.guard.approval_mode, self.guard.channel.name
        # A terminal asks inside the graph's step (and fails without a TTY): not an interrupt.
        if mode == "raise" and channel not in ("none", "terminal"):
            return
        raise ValueError(
            "approval='interrupt' needs a guard that raises ApprovalPending and keeps the "
            "request in its queue until a person answers it: "
            "Guard(..., approval_mode='raise', approver=QueueChannel()) "
            "(from agentguard.approval import QueueChannel), or "
            "approval: {mode: raise, channel: queue} in the policy; "
            f"this guard has approval_mode={mode!r} and channel {channel!r}"
        )

    def _parsed(self) -> Delegation:
        if isinstance(self.delegation, str):
            return Delegation.parse(self.delegation)
        return self.delegation

    def address(self, tool_name: str) -> str:
        """The tool address policies and delegations use: ``namespace/tool``."""
        return f"{self.namespace}/{tool_name}"

    def same_authority(self, other: ToolGate) -> bool:
        """Whether ``other`` decides for the same holder under the same delegation."""
        return (
            self.guard is other.guard
            and self.holder.id == other.holder.id
            and self.holder.kid == other.holder.kid
            and self._parsed().leaf.link_id == other._parsed().leaf.link_id
            and self.approval == other.approval
        )

    def run(
        self,
        address: str,
        prepared: Prepared,
        prepare: Prepare,
        *,
        call_id: str | None,
        step: _Step | None = None,
    ) -> Any:
        """Run ``prepared`` through ``guard.call`` if the guard allows exactly its arguments.

        ``step`` names the LangGraph task the call runs in: a call id that already
        ran in that task is not run again when the task is re-run on resume.

        Raises:
            DeniedError: refused (including :class:`ReviewerRejected` and
                :class:`agentguard.ApprovalPending` when no approval is recorded).
            GraphInterrupt: interrupt mode, first pass: the run pauses for a human.
        """
        once = _Once.key(step, call_id, address, self, prepared.origin)
        try:
            for _ in range(MAX_REVIEW_ROUNDS):
                replay = self._replay(once)
                if replay is not _NOTHING:
                    return replay
                try:
                    return self._call(address, prepared, prepare, call_id, once)
                except ApprovalPending as pending:
                    if self.approval != "interrupt":
                        raise
                    prepared = self._answer(self._ask(pending), pending, prepared, prepare)
            # Out of review rounds: one last try, whose ApprovalPending refuses the call.
            return self._call(address, prepared, prepare, call_id, once)
        except DeniedError as exc:
            raise self._explained(exc, address, prepared.args) from None

    async def arun(
        self,
        address: str,
        prepared: Prepared,
        prepare: Prepare,
        *,
        call_id: str | None,
        step: _Step | None = None,
    ) -> Any:
        """Async twin of :meth:`run`, through ``guard.acall`` (``prepared.run`` may be async)."""
        once = _Once.key(step, call_id, address, self, prepared.origin)
        try:
            for _ in range(MAX_REVIEW_ROUNDS):
                replay = self._replay(once)
                if replay is not _NOTHING:
                    return replay
                try:
                    return await self._acall(address, prepared, prepare, call_id, once)
                except ApprovalPending as pending:
                    if self.approval != "interrupt":
                        raise
                    prepared = self._answer(self._ask(pending), pending, prepared, prepare)
            return await self._acall(address, prepared, prepare, call_id, once)
        except DeniedError as exc:
            raise self._explained(exc, address, prepared.args) from None

    def _call(
        self,
        address: str,
        prepared: Prepared,
        prepare: Prepare,
        call_id: str | None,
        once: _OnceKey | None,
    ) -> Any:
        def execute(**decided: Any) -> Any:
            result = self._chosen(prepared, prepare, decided).run()
            self._ran(once, result)
            return result

        return self.guard.call(
            self.delegation, address, prepared.args, execute, holder=self.holder, call_id=call_id
        )

    async def _acall(
        self,
        address: str,
        prepared: Prepared,
        prepare: Prepare,
        call_id: str | None,
        once: _OnceKey | None,
    ) -> Any:
        async def execute(**decided: Any) -> Any:
            result = self._chosen(prepared, prepare, decided).run()
            if inspect.isawaitable(result):
                result = await result
            self._ran(once, result)
            return result

        return await self.guard.acall(
            self.delegation, address, prepared.args, execute, holder=self.holder, call_id=call_id
        )

    def _chosen(self, prepared: Prepared, prepare: Prepare, decided: Mapping[str, Any]) -> Prepared:
        """What runs: the decided call, parsed by the tool's schema.

        The guard hands back the arguments it decided on: those submitted, or an
        approver's edit. An edit is parsed by the tool's schema like any call and
        runs only if the tool receives exactly what the approver approved.
        """
        if _same_values(decided, prepared.args) or _canonical(decided) == _canonical(prepared.args):
            return prepared
        chosen = prepare(decided)
        if _canonical(chosen.args) != _canonical(decided):
            raise _Mismatch("the tool's schema changes the approved arguments; they are not run")
        return chosen

    def _replay(self, once: _OnceKey | None) -> Any:
        """The earlier result of this call in this graph step, or a refusal if it ran
        elsewhere; :data:`_NOTHING` when it has not run. Checked before deciding, so
        a repeat leaves no ``allow`` record."""
        if once is None:
            return _NOTHING
        earlier = _ONCE.replay(once)
        if earlier is _NOTHING and once.durable and self.guard.was_spent(_ONCE_SCOPE, once.key):
            raise AlreadyRan(
                "this tool call already ran in an earlier attempt of the same graph step; "
                "it is not run again"
            )
        return earlier

    def _ran(self, once: _OnceKey | None, result: Any) -> None:
        """Remember a call that completed (one that raised may be retried)."""
        if once is None:
            return
        _ONCE.remember(once, result)
        if once.durable and not self.guard.spend_once(_ONCE_SCOPE, once.key, ttl=_ONCE_TTL):
            log.warning(
                "agentguard: a LangGraph step's tool call ran twice at the same time "
                "(two resumes of one checkpoint?)"
            )

    def _explained(self, exc: DeniedError, address: str, args: dict[str, Any]) -> DeniedError:
        """A queue rejection, with the reviewer's note for the model when there is one; a
        pending approval, with who can answer it and how."""
        if isinstance(exc, ApprovalPending) and not isinstance(exc, WaitingForApproval):
            found = self._who_and_how(exc.request_id)
            return exc if found is None else WaitingForApproval(exc, *found)
        if exc.reason != "approval_rejected" or isinstance(exc, ReviewerRejected):
            return exc
        # The guard's DeniedError does not name the request; find it by call digest.
        digest = call_digest(address, args_digest(args), self._parsed().leaf.link_id)
        for request in self.guard.approvals.all():
            if request.call_digest == digest and request.status != "pending":
                return ReviewerRejected(
                    request.message, request_id=request.id, decision_id=exc.decision_id
                )
        return exc

    def _who_and_how(self, request_id: str) -> tuple[list[str], str] | None:
        """Who may approve a request and the guard's who-and-how line; ``None`` if unknown."""
        book = self.guard.approvals
        try:
            request = book.get(request_id)
            who = book.who_may_approve(request)
            return who, book.how_to_answer(request, who)
        except AgentGuardError:  # cannot tell: the refusal stands as it is
            return None

    def _how(self, request_id: str) -> str | None:
        found = self._who_and_how(request_id)
        return None if found is None else found[1]

    def _ask(self, pending: ApprovalPending) -> Resume:
        request = self.guard.approvals.get(pending.request_id)
        payload = approval_payload(request, pending, self._how(pending.request_id))
        # First pass: raises GraphInterrupt. On resume: returns the human's answer.
        return parse_resume(_interrupt(payload))

    @staticmethod
    def _answer(
        resume: Resume, pending: ApprovalPending, prepared: Prepared, prepare: Prepare
    ) -> Prepared:
        if resume.action == "reject":
            raise ReviewerRejected(
                resume.message, request_id=pending.request_id, decision_id=pending.decision_id
            )
        if resume.action == "edit" and resume.args is not None:
            # The edited call is validated by the tool's schema and decided afresh; the
            # guard only runs it with an approval bound to exactly these arguments.
            return prepare(resume.args)
        return prepared


class WaitingForApproval(ApprovalPending):
    """:class:`agentguard.ApprovalPending` as a model is told of it: the request, that a
    person must approve it and who can, and to call again. Names no argument value and no
    way of approving (an agent that can run commands must not be handed the one that
    approves); ``how`` keeps the full line for people (logs, the interrupt payload)."""

    def __init__(self, pending: ApprovalPending, who: Sequence[str], how: str) -> None:
        super().__init__(
            pending.explanation,
            request_id=pending.request_id,
            decision_id=pending.decision_id,
            reason=pending.reason,
        )
        self.who = tuple(who)
        self.how = how

    @property
    def short(self) -> str:
        return (
            f"approval pending, id={self.request_id}: {pending_note(self.who)}; "
            "call the tool again once it is approved"
        )


class AlreadyRan(DeniedError):
    """This tool call already ran in an earlier attempt of the same LangGraph step.

    LangGraph re-runs a whole node when it resumes after an interrupt; the calls
    of that node which already ran are not run again. In the same process the
    earlier result is returned instead; elsewhere the repeat is refused.
    """

    default_reason = Reason.ALREADY_RAN


#: How long a graph step's calls are remembered as done (resumes later than this re-run).
_ONCE_TTL = 7 * 24 * 3600.0
_ONCE_SCOPE = "langgraph-ran"
_NOTHING: Any = object()


class _Step(NamedTuple):
    """The LangGraph task a call runs in; ``durable`` when a checkpointer can resume it."""

    name: str
    durable: bool


class _OnceKey(NamedTuple):
    key: str
    durable: bool


class _Once:
    """Results of calls that completed inside a LangGraph step, by (step, call, tool, holder).

    Bounded and process-local: it answers a node's re-run (on resume, or a
    retry of the node) with the earlier result. The store remembers the same
    keys (:meth:`ToolGate._ran`), so a re-run in another process is refused.
    A call without an id is known by what it says.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._results: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(
        step: _Step | None, call_id: str | None, address: str, gate: ToolGate, origin: str
    ) -> _OnceKey | None:
        if step is None:
            return None
        who = gate._parsed().leaf.link_id
        raw = json.dumps([step.name, call_id or None, address, who, origin], separators=(",", ":"))
        return _OnceKey(hashlib.sha256(raw.encode()).hexdigest(), step.durable)

    def replay(self, once: _OnceKey) -> Any:
        with self._lock:
            return self._results.get(once.key, _NOTHING)

    def remember(self, once: _OnceKey, result: Any) -> None:
        with self._lock:
            self._results[once.key] = result
            self._results.move_to_end(once.key)
            while len(self._results) > self.LIMIT:
                self._results.popitem(last=False)


_ONCE = _Once()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(args: Mapping[str, Any]) -> str:
    return _CANONICAL.encode(args)


def _same_values(decided: Mapping[str, Any], prepared: Mapping[str, Any]) -> bool:
    """Whether the guard handed back the very values submitted (no edit): the same
    keys holding the same objects, so necessarily the same JSON."""
    return decided.keys() == prepared.keys() and all(
        decided[key] is value for key, value in prepared.items()
    )
