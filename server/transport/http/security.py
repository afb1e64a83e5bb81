"""Bearer tokens on the HTTP port: the same token file and call categories as gRPC
(:mod:`peregrine.server.security.tokens`), read from the ``Authorization: Bearer <token>`` header."""

from __future__ import annotations

from collections.abc import Iterable

from ...core.errors import PeregrineError, PermissionDenied
from ...security.tokens import TokenStore, check_categories


class Unauthenticated(PeregrineError):
    """The request carries no token, or one the server does not hold (401)."""

    code = "UNAUTHENTICATED"


class TokenCheck:
    """Raises Unauthenticated or PermissionDenied for a request of a guarded category whose
    ``Authorization`` header does not carry a token allowed that category."""

    def __init__(self, tokens: TokenStore | None, open_categories: Iterable[str] = ("health",)) -> None:
        self.tokens = tokens
        self.open = frozenset(check_categories(open_categories))

    def check(self, category: str, authorization: str | None, what: str) -> None:
        if self.tokens is None or category in self.open:
            return
        if authorization is None:
            raise Unauthenticated(f"{what} ({category}) needs the header 'Authorization: Bearer <token>'; "
                                  "the request carried none")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(f"{what} ({category}): the header 'Authorization' must read 'Bearer <token>'")
        scope = self.tokens.scope(token.strip())
        if scope is False:
            raise Unauthenticated(f"{what} ({category}): the bearer token in 'Authorization' is not accepted")
        if scope is not None and category not in scope:
            raise PermissionDenied(f"{what} ({category}): this token may call only {', '.join(sorted(scope))}")
