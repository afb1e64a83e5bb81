"""Webhooks: when a job ends, its outcome POSTed as JSON to the URL the job named, signed, retried.

The body is signed with the server's secret: ``X-Peregrine-Signature: sha256=<hex HMAC-SHA256 of the body>``
(the receiver recomputes it over the raw body and compares in constant time; GitHub's and Stripe's webhooks
work the same way). ``X-Peregrine-Job`` names the job and ``X-Peregrine-Delivery`` the attempt. A 2xx answer
delivers it; a 4xx other than 408 and 429 is final (the receiver refused it); anything else (5xx, a timeout, a
refused connection) is tried again after 1, 2, 4, 8 ... seconds, ``attempts`` times in all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Peregrine-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (the header's value) signs ``body`` with ``secret`` (for receivers, and tests)."""
    return hmac.compare_digest(sign(secret, body), signature)


@dataclass(frozen=True)
class Webhooks:
    """Where jobs may send their outcome (URL prefixes) and the secret that signs it."""

    secret: bytes
    allowed_prefixes: tuple[str, ...]
    attempts: int = 5
    first_wait_s: float = 1.0
    timeout_s: float = 10.0

    def allows(self, url: str) -> bool:
        return url.startswith(("http://", "https://")) and url.startswith(self.allowed_prefixes)

    def deliver(self, url: str, job_id: str, outcome: dict[str, Any]) -> bool:
        """POST ``outcome`` to ``url`` until it is taken or refused, or the attempts run out (blocking)."""
        body = json.dumps(outcome, separators=(",", ":")).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body),
                "X-Peregrine-Job": job_id, "X-Peregrine-Delivery": str(attempt)})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # allowed prefixes only
                    if 200 <= answer.status < 300:
                        return True
                    why = f"HTTP {answer.status}"
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    log.warning("job %s: webhook %s refused the notification (%s); not retried", job_id, url, why)
                    return False
            except (urllib.error.URLError, OSError) as e:
                why = str(getattr(e, "reason", e))
            if attempt < self.attempts:
                wait = self.first_wait_s * 2 ** (attempt - 1)
                log.info("job %s: webhook %s failed (%s); retrying in %.0f s", job_id, url, why, wait)
                time.sleep(wait)
            else:
                log.warning("job %s: webhook %s failed %d times (last: %s); giving up", job_id, url, attempt, why)
        return False
