"""Approval cards in Jupyter notebooks (the ``notebook`` extra: ipywidgets).

A :class:`NotebookChannel` shows each approval request as a card (what the
agent wants to do, approve / deny buttons, a message box) and records the click
through :meth:`ApprovalBook.answer` (assurance ``local``: a human at this
machine, identity unproven).

It never blocks a cell. A click reaches the kernel only while the cell
*awaits* (ipykernel >= 7.4), so::

    guard = Guard(approver=NotebookChannel("user:me"))
    result = await guard.acall(delegation, "tickets/close", {"id": 7}, close, holder=bot)

waits for the click without blocking. A synchronous ``guard.call`` that would
wait for a card fails fast with a message saying what to do instead; with
``approval_mode="raise"`` and :meth:`NotebookChannel.attach` the card is shown,
:class:`~agentguard.errors.ApprovalPending` is raised, and running the same
call again after the click proceeds.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from agentguard.approval import ApprovalBook, ApprovalRequest, request_html
from agentguard.clock import format_duration
from agentguard.decision import Reason
from agentguard.errors import AgentGuardError, ConfigError, DeniedError
from agentguard.keys import validate_principal_id

if TYPE_CHECKING:
    from agentguard.guard import Guard

__all__ = ["CARD_ASSURANCE", "ApprovalCard", "NotebookChannel", "PendingApprovals", "pending_html"]


def _widgets() -> Any:
    try:
        import ipywidgets  # type: ignore[import-untyped]  # ipywidgets ships no type hints
    except ImportError as exc:
        raise ConfigError(
            "notebook approval cards need the 'notebook' extra: pip install 'agentguard[notebook]'"
        ) from exc
    return ipywidgets


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _request_html(request: ApprovalRequest, now: float) -> str:
    view = request.view()
    left = request.deadline - now
    deadline = f"answer within {format_duration(left)}" if left > 0 else "deadline passed"
    return (
        '<div style="font-family:sans-serif">'
        f"<b>{_e(view.requester)}</b> wants to call <code>{_e(view.tool)}</code>"
        f"{request_html(request)}"
        f"<small>delegated by {_e(' -> '.join(view.path))}<br>"
        f"approval required by {_e('; '.join(view.rules))}<br>"
        f"{_e(deadline)} &middot; request {_e(request.id)}</small></div>"
    )


#: The assurance a click on a card carries: a human at this machine, identity unproven.
CARD_ASSURANCE = "local"


def _would_count(
    book: ApprovalBook, request: ApprovalRequest, approver: str, *, approve: bool
) -> str | None:
    """``None`` when ``approver``'s click would be recorded, else why not (and what would)."""
    try:
        book.check_answerer(
            request.id, approver=approver, assurance=CARD_ASSURANCE, approving=approve
        )
    except DeniedError as exc:
        return exc.explanation
    except AgentGuardError as exc:  # cannot tell (the store did not answer): offer nothing
        return f"cannot tell whether this answer would count ({type(exc).__name__})"
    return None


def _who_and_how(book: ApprovalBook, request: ApprovalRequest) -> str:
    try:
        return book.how_to_answer(request, book.who_may_approve(request))
    except AgentGuardError:  # cannot tell who may answer: say how, not who
        return book.how_to_answer(request, [])


class ApprovalCard:
    """One request as an ipywidgets card; clicking a button records the answer.

    ``approve_button.click()`` / ``deny_button.click()`` do what a click does
    (useful in tests). ``answer`` becomes ``"approved"`` or ``"denied"`` once
    the book accepted it; a refusal by the book (approver not authorised,
    separation of duties, request closed) is shown on the card.

    A button whose answer would not count (the approver may not approve this
    call, or only at a higher assurance than a card carries) is disabled from
    the start, and the card says why and who can answer instead.
    """

    def __init__(self, request: ApprovalRequest, book: ApprovalBook, approver: str) -> None:
        widgets = _widgets()
        self.request = request
        self.approver = approver
        self.answer: str | None = None
        self._book = book
        #: Why an approval (a denial) from this card would not count; ``None`` when it would.
        self.approve_refused: str | None = None
        self.deny_refused: str | None = None
        #: Who can answer and how, as a waiting call logs it.
        self.how_to_answer = ""
        self.message = widgets.Textarea(
            placeholder="Message (optional; sent back to the caller with a denial)",
            layout=widgets.Layout(width="100%"),
        )
        self.approve_button = widgets.Button(
            description="Approve", button_style="success", icon="check"
        )
        self.deny_button = widgets.Button(description="Deny", button_style="danger", icon="times")
        self.status = widgets.HTML()
        self._request = widgets.HTML()
        self._how = widgets.HTML()
        self.approve_button.on_click(lambda _button: self._answer(approve=True))
        self.deny_button.on_click(lambda _button: self._answer(approve=False))
        self.widget = widgets.VBox(
            [
                self._request,
                self.message,
                widgets.HBox([self.approve_button, self.deny_button]),
                self.status,
                self._how,
            ],
            layout=widgets.Layout(border="1px solid #d0d7de", padding="8px", margin="4px 0"),
        )
        self.refresh()

    def refresh(self) -> None:
        """Ask the book again what a click would do, and redraw the card.

        A card shown again (a re-run cell) may be minutes old: an approver
        revoked or removed from the policy since must not see an enabled
        button, and one added since should. An answered card stays as it is.
        """
        if self.answer is not None:
            return
        book, request = self._book, self.request
        self.approve_refused = _would_count(book, request, self.approver, approve=True)
        self.deny_refused = _would_count(book, request, self.approver, approve=False)
        self.how_to_answer = _who_and_how(book, request)
        self.approve_button.disabled = self.approve_refused is not None
        self.deny_button.disabled = self.deny_refused is not None
        self.message.disabled = self.approve_button.disabled and self.deny_button.disabled
        self.status.value = self._status_html()
        self._request.value = _request_html(request, book.clock.now())
        self._how.value = f"<small>{_e(self.how_to_answer)}</small>"

    def _status_html(self) -> str:
        text = f"<small>answering as {_e(self.approver)}</small>"
        if self.approve_refused is not None:
            # The approval would be refused: say so before anyone clicks, not after.
            text += (
                '<br><span style="color:#9a6700">Your approval from this card would not '
                f"count: {_e(self.approve_refused)}</span>"
            )
        return text

    def _answer(self, *, approve: bool) -> None:
        message = str(self.message.value).strip() or None
        try:
            self._book.answer(
                self.request.id,
                approver=self.approver,
                approve=approve,
                channel="notebook",
                assurance=CARD_ASSURANCE,
                message=message,
            )
        except DeniedError as exc:
            # Shown on the card; a widget callback must not raise into the kernel.
            self.status.value = (
                f'<span style="color:#cf222e">Not recorded: {_e(exc.explanation)}</span>'
            )
            return
        self.answer = "approved" if approve else "denied"
        for button in (self.approve_button, self.deny_button):
            button.disabled = True
        self.message.disabled = True
        color = "#1a7f37" if approve else "#cf222e"
        self.status.value = (
            f'<b style="color:{color}">{_e(self.answer.capitalize())}</b> by {_e(self.approver)}'
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _display(card: ApprovalCard) -> None:
    from IPython.display import display

    display(card.widget)  # type: ignore[no-untyped-call]  # IPython's display is unannotated


class NotebookChannel:
    """Shows approval requests as cards in the running notebook (assurance ``local``).

    Args:
        approver: the principal id of the person at this notebook (listed as
            an approver in the policy).
        display: how a card is shown (default ``IPython.display.display``).

    Raises:
        ConfigError: the ``notebook`` extra is not installed.
        IdentityError: ``approver`` is not a principal id.
    """

    #: Answers are clicks by whoever sits at this notebook.
    assurance = "local"

    name = "notebook"

    def __init__(
        self, approver: str, *, display: Callable[[ApprovalCard], None] | None = None
    ) -> None:
        _widgets()
        self.approver = validate_principal_id(approver)
        self.cards: dict[str, ApprovalCard] = {}
        self._display = display or _display
        self._guard: weakref.ref[Guard] | None = None

    def attach(self, guard: Guard) -> NotebookChannel:
        """Make this the approval channel of ``guard``; returns the channel.

        Knowing the guard lets a synchronous call in ``approval_mode="raise"``
        show the card and raise ``ApprovalPending`` instead of failing.
        """
        guard.channel = self
        self._guard = weakref.ref(guard)
        return self

    def show(self, request: ApprovalRequest, book: ApprovalBook) -> ApprovalCard:
        """Build and display the card for ``request`` (also kept in :attr:`cards`)."""
        card = ApprovalCard(request, book, self.approver)
        self.cards[request.id] = card
        self._display(card)
        return card

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Show the card when the guard will not wait for it; otherwise fail fast.

        A blocking cell never sees a click, so a synchronous call that would
        wait is refused at once (the request is closed) with what to do instead.

        Raises:
            DeniedError: reason ``approval_unavailable`` for a call that would block.
        """
        guard = self._guard() if self._guard is not None else None
        if guard is not None and guard.approval_mode == "raise":
            self.show(request, book)
            return
        # Close the request so a later awaited call files (and shows) a fresh one.
        book.withdraw(request.id)
        raise DeniedError(
            f"{request.tool} needs approval, and a notebook card cannot be clicked while a "
            "synchronous call blocks the cell: use `await guard.acall(...)` (the cell then "
            'waits for the click), or create the guard with approval_mode="raise", '
            "attach the channel with `channel.attach(guard)` and run the call again "
            "after approving",
            reason=Reason.APPROVAL_UNAVAILABLE,
        )

    async def adeliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Show the card and return; the awaiting guard polls the store for the click."""
        self.show(request, book)

    def remind(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Show the card of a request that is still pending again (a re-run cell).

        The card shown before is shown again while it is unanswered; a request
        this channel never showed (filed by another process) gets a new card.

        Raises:
            DeniedError: reason ``approval_unavailable`` for a synchronous call
                that would block (a blocked cell never sees a click).
        """
        guard = self._guard() if self._guard is not None else None
        if guard is None or guard.approval_mode != "raise":
            raise DeniedError(
                f"{request.tool} waits for approval request {request.id}, and a notebook card "
                "cannot be clicked while a synchronous call blocks the cell: use "
                '`await guard.acall(...)`, or approval_mode="raise" with '
                "`channel.attach(guard)`",
                reason=Reason.APPROVAL_UNAVAILABLE,
            )
        self._show_again(request, book)

    async def aremind(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Show the card of a request that is still pending again; the guard then waits."""
        self._show_again(request, book)

    def _show_again(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        card = self.cards.get(request.id)
        if card is None or card.answer is not None:
            self.show(request, book)
        else:
            card.refresh()  # what the book says now, not when the card was first drawn
            self._display(card)


class PendingApprovals:
    """Pending requests of a book, rendered as an HTML table in notebooks."""

    def __init__(self, book: ApprovalBook) -> None:
        self.book = book

    def requests(self) -> list[ApprovalRequest]:
        """The pending requests, newest first."""
        return self.book.pending()

    def _repr_html_(self) -> str:
        return pending_html(self.requests(), self.book.clock.now())


def pending_html(requests: Iterable[ApprovalRequest], now: float) -> str:
    """An HTML table of approval requests (every value escaped)."""
    rows = "".join(
        "<tr>"
        f"<td><code>{_e(r.id)}</code></td><td><code>{_e(r.tool)}</code></td>"
        f"<td>{_e(r.requester)}</td><td>{_e(r.on_behalf_of or '')}</td>"
        f"<td>{_e(' -> '.join(r.path))}</td>"
        f"<td>{_e(format_duration(r.deadline - now))}</td>"
        "</tr>"
        for r in requests
    )
    if not rows:
        return "<p><i>No approval requests are pending.</i></p>"
    return (
        "<table><thead><tr><th>id</th><th>tool</th><th>requester</th><th>on behalf of</th>"
        f"<th>delegation</th><th>time left</th></tr></thead><tbody>{rows}</tbody></table>"
    )
