"""The webhook approval channel: POST each request as JSON to a configured URL.

The receiver (a chat bot, a ticketing system) shows the request to humans; the
answer comes back through the queue (``agentguard approvals approve|deny``) or
the web page, never through the webhook's HTTP response. Only the redacted
request travels: no tokens, no raw arguments.

With a shared secret every delivery is signed::

    X-AgentGuard-Timestamp: 1800000000
    X-AgentGuard-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>

Receivers check it with :func:`verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentguard.approval import ApprovalBook, ApprovalRequest
from agentguard.clock import Clock
from agentguard.decision import Reason
from agentguard.errors import ConfigError, DeniedError

if TYPE_CHECKING:
    from agentguard.policy import ApprovalSettings

__all__ = [
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "request_payload",
    "sign_payload",
    "verify_signature",
]

log = logging.getLogger("agentguard.webhook")

#: Environment variable holding the shared secret (secrets stay out of agentguard.yaml).
SECRET_ENV = "AGENTGUARD_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
SIGNATURE_HEADER = "X-AgentGuard-Signature"
TIMESTAMP_HEADER = "X-AgentGuard-Timestamp"


def request_payload(request: ApprovalRequest) -> dict[str, Any]:
    """The JSON document a webhook receives for ``request`` (redacted, no secrets).

    ``args_display`` holds every argument as data; ``display`` holds what a
    human should be shown, as every other channel shows it: ``text`` (long
    values folded with "… N more characters"), ``full_text`` (nothing folded),
    the arguments one by one, and each link's purpose and sponsor with the
    principal who asserted it (``by_agent`` when an agent or service did).
    Show ``display`` texts as plain text; they are escaped for that already.
    """
    return {
        "type": "agentguard.approval_request",
        "id": request.id,
        "created_at": request.created_at,
        "deadline": request.deadline,
        **request.to_json(),
        "display": {
            **request.view().to_json(),
            "text": request.describe(),
            "full_text": request.describe(full=True),
        },
    }


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign_payload(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp``: ``sha256=<hex>``."""
    mac = hmac.new(_secret_bytes(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float,
    tolerance: float = 300,
) -> bool:
    """Whether a received webhook is authentic and fresh (for receivers).

    ``timestamp`` and ``signature`` are the header values; ``now`` the
    receiver's current time. Deliveries older or newer than ``tolerance``
    seconds are refused, so a captured delivery cannot be replayed later.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(sign_payload(secret, body, sent), signature)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the POST into a GET elsewhere: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookChannel:
    """POSTs each approval request to ``url``; answers come back through the queue.

    Args:
        url: an ``http`` or ``https`` URL (use https beyond this machine).
        secret: shared secret for the HMAC-SHA256 signature header (optional).
        timeout: seconds to wait for the receiver; delivery must be quick.
        headers: extra request headers (e.g. a receiver's own API key).
        clock: time source for the signature timestamp (default: wall clock).

    Raises:
        ValueError: the URL is not http(s).
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | None = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the webhook URL must be an http:// or https:// URL")
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._clock = clock
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._host = parts.hostname

    @classmethod
    def from_settings(
        cls, settings: ApprovalSettings, environ: Mapping[str, str] | None = None
    ) -> WebhookChannel:
        """The channel ``agentguard.yaml`` selects (``approval.webhook_url``).

        The shared secret comes from ``$AGENTGUARD_WEBHOOK_SECRET`` when set.

        Raises:
            ConfigError: no ``webhook_url``, or it is not an http(s) URL.
        """
        env = os.environ if environ is None else environ
        if not settings.webhook_url:
            raise ConfigError("approval.channel is 'webhook' but approval.webhook_url is not set")
        try:
            return cls(settings.webhook_url, secret=env.get(SECRET_ENV) or None)
        except ValueError as exc:
            raise ConfigError(f"approval.webhook_url: {exc}") from None

    def __repr__(self) -> str:
        # The URL may carry a token in its query; show the host only.
        return f"<WebhookChannel to {self._host}>"

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """POST the request; any failure refuses the call.

        Raises:
            DeniedError: reason ``approval_unavailable`` when the receiver cannot
                be reached or does not answer 2xx in time.
        """
        body = json.dumps(request_payload(request), sort_keys=True).encode("utf-8")
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "User-Agent": "agentguard-webhook/1",
        }
        if self._secret is not None:
            stamp = int(self._now())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign_payload(self._secret, body, stamp)
        post = urllib.request.Request(  # noqa: S310 - scheme checked in __init__ (http/https only)
            self.url, data=body, headers=headers, method="POST"
        )
        try:
            with self._opener.open(post, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            status = exc.code
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            log.warning("agentguard webhook to %s failed: %s", self._host, type(exc).__name__)
            raise DeniedError(
                f"approval webhook could not be delivered ({type(exc).__name__})",
                reason=Reason.APPROVAL_UNAVAILABLE,
            ) from None
        if not 200 <= status < 300:
            log.warning("agentguard webhook to %s answered HTTP %s", self._host, status)
            raise DeniedError(
                f"approval webhook receiver answered HTTP {status}",
                reason=Reason.APPROVAL_UNAVAILABLE,
            )

    async def adeliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """:meth:`deliver` in a worker thread, so the event loop never blocks.

        Raises:
            DeniedError: as :meth:`deliver`.
        """
        import anyio

        await anyio.to_thread.run_sync(self.deliver, request, book)
