"""gRPC handlers of the user service: the caller's rights and the proto in, a use case,
the proto out; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common import fieldmask, tls
from services.common.auth import require_admin, require_owner
from services.common.events.feed import Feed, heartbeat_interval
from services.common.interceptors import Context
from services.user.convert import to_feed_message, tokens_to_proto, user_to_proto
from services.user.signin import SignIns
from services.user.usecases import UPDATABLE, Users
from shop.user.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    user_internal_pb2,
    user_internal_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

# The client's address, as the gateway saw it (gateway/upstream.py).
CLIENT_ADDRESS = "x-client-address"


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(self, users: Users) -> None:
        self._users = users

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: Context
    ) -> user_pb2.CreateUserResponse:
        user = await self._users.create(request.email, request.display_name)
        return user_pb2.CreateUserResponse(user=user_to_proto(user))

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        require_owner(request.id)
        return user_pb2.GetUserResponse(user=user_to_proto(await self._users.get(request.id)))

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: Context
    ) -> user_pb2.ListUsersResponse:
        require_admin()
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._users.list_page(size, request.page_token)
        return user_pb2.ListUsersResponse(
            users=[user_to_proto(u) for u in rows], next_page_token=next_token
        )

    async def UpdateUser(
        self, request: user_pb2.UpdateUserRequest, context: Context
    ) -> user_pb2.UpdateUserResponse:
        caller = require_owner(request.user.id)
        changes = fieldmask.changes(request.update_mask, request.user, UPDATABLE)
        user = await self._users.update(request.user.id, changes, by_admin=caller.is_admin)
        return user_pb2.UpdateUserResponse(user=user_to_proto(user))


class UserInternalServicer(user_internal_pb2_grpc.UserInternalServiceServicer):
    def __init__(self, users: Users, feed: Feed) -> None:
        self._users = users
        self._feed = feed

    async def ValidateUser(
        self, request: user_internal_pb2.ValidateUserRequest, context: Context
    ) -> user_internal_pb2.ValidateUserResponse:
        user = await self._users.require_active(request.user_id)
        return user_internal_pb2.ValidateUserResponse(user=user_to_proto(user))

    async def StreamUserEvents(
        self, request: user_internal_pb2.StreamUserEventsRequest, context: Context
    ) -> AsyncIterator[user_internal_pb2.StreamUserEventsResponse]:
        heartbeat = heartbeat_interval(request)
        await self._feed.open(context, heartbeat)
        async for item in self._feed.events_and_heartbeats(request.after_sequence, heartbeat):
            yield to_feed_message(item)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Built-in sign-in. Passwords go from the request to the use case and nowhere else."""

    def __init__(self, sign_ins: SignIns, *, trust_forwarded_address: bool) -> None:
        self._sign_ins = sign_ins
        # Without TLS there is no telling the gateway apart: take its word (debugging only).
        self._trust_forwarded = trust_forwarded_address

    async def SignUp(
        self, request: auth_pb2.SignUpRequest, context: Context
    ) -> auth_pb2.SignUpResponse:
        user, tokens = await self._sign_ins.sign_up(
            request.email, request.display_name, request.password
        )
        return auth_pb2.SignUpResponse(user=user_to_proto(user), tokens=tokens_to_proto(tokens))

    async def SignIn(
        self, request: auth_pb2.SignInRequest, context: Context
    ) -> auth_pb2.SignInResponse:
        tokens = await self._sign_ins.sign_in(
            request.email, request.password, self._client_address(context)
        )
        return auth_pb2.SignInResponse(tokens=tokens_to_proto(tokens), user_id=tokens.user_id)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: Context
    ) -> auth_pb2.RefreshResponse:
        tokens = await self._sign_ins.refresh(request.refresh_token)
        return auth_pb2.RefreshResponse(tokens=tokens_to_proto(tokens))

    async def SignOut(
        self, request: auth_pb2.SignOutRequest, context: Context
    ) -> auth_pb2.SignOutResponse:
        await self._sign_ins.sign_out(request.refresh_token)
        return auth_pb2.SignOutResponse()

    def _client_address(self, context: Context) -> str:
        """Who is signing in, for the per-address throttle: the address the gateway
        forwarded when the caller is the gateway (its certificate says so), else the
        peer's own address (a direct caller cannot pick the address it is counted under)."""
        if self._trust_forwarded or tls.role_of(context.auth_context()) == tls.GATEWAY:
            for key, value in context.invocation_metadata() or ():
                if key == CLIENT_ADDRESS and isinstance(value, str) and value:
                    return value[:64]
        return peer_host(context.peer() or "")


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `::1`."""
    _, _, address = peer.partition(":")
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        return address or peer
    return host.strip("[]")
