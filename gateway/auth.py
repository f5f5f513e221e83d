"""Authentication at the edge: every request's bearer token is verified here.

A request with a bad token is refused (401, `unauthenticated`) before anything
else happens; one without a token goes on as anonymous, and only the procedures
the contracts declare ACCESS_PUBLIC (sign-up and reading the catalogue) accept
that. The token itself is passed on to the services, which verify it again and
check roles and ownership.
"""

from __future__ import annotations

from google.rpc import code_pb2
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.refusal import refuse
from services.common.access import is_public
from services.common.auth import Caller, Verifier, bearer_token, single_authorization
from services.common.errors import Unauthenticated

CHALLENGE = {"www-authenticate": 'Bearer realm="shop"'}


def require_token(procedure: str, authorization: str | None) -> None:
    """Raises Unauthenticated when `procedure` needs a caller and none signed in."""
    if not authorization and not is_public(procedure):
        raise Unauthenticated("sign in: this call needs a bearer token", "TOKEN_MISSING")


class Authentication:
    """ASGI middleware: verifies the token, and records the caller for the rate limit."""

    def __init__(self, app: ASGIApp, verifier: Verifier) -> None:
        self.app = app
        self.verifier = verifier

    def _caller(self, scope: Scope) -> Caller | None:
        values = [
            value.decode("latin-1")
            for key, value in scope.get("headers", [])
            if key.lower() == b"authorization"
        ]
        token = bearer_token(single_authorization(values))
        return None if token is None else self.verifier.verify(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            caller = self._caller(scope)
        except Unauthenticated as error:
            headers = {**CHALLENGE, "www-authenticate": 'Bearer error="invalid_token"'}
            await refuse(
                scope, send, code_pb2.UNAUTHENTICATED, error.message, headers, reason=error.reason
            )
            return
        if caller is not None:
            state = scope.setdefault("state", {})
            state["user_id"] = caller.user_id
        await self.app(scope, receive, send)
