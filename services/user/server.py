"""gRPC servicers of the user service: protos in, use cases, protos out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from services.common import fieldmask
from services.common.auth import require_admin, require_owner
from services.common.config import DEFAULT_PORTS
from services.common.errors import PermissionDenied
from services.common.interceptors import Context
from services.common.server import Runtime, ServiceSpec
from services.common.times import to_timestamp
from services.user.models import UserRow
from services.user.service import ADMIN_ONLY, UPDATABLE, Users
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc


def to_proto(user: UserRow) -> user_pb2.User:
    return user_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        active=user.active,
        create_time=to_timestamp(user.create_time),
        update_time=to_timestamp(user.update_time),
    )


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(self, users: Users) -> None:
        self._users = users

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: Context
    ) -> user_pb2.CreateUserResponse:
        user = await self._users.create(request.email, request.display_name)
        return user_pb2.CreateUserResponse(user=to_proto(user))

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        require_owner(request.id)
        return user_pb2.GetUserResponse(user=to_proto(await self._users.get(request.id)))

    async def ListUsers(
        self, request: user_pb2.ListUsersRequest, context: Context
    ) -> user_pb2.ListUsersResponse:
        require_admin()
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._users.list_page(size, request.page_token)
        return user_pb2.ListUsersResponse(
            users=[to_proto(u) for u in rows], next_page_token=next_token
        )

    async def UpdateUser(
        self, request: user_pb2.UpdateUserRequest, context: Context
    ) -> user_pb2.UpdateUserResponse:
        caller = require_owner(request.user.id)
        changes = fieldmask.changes(request.update_mask, request.user, UPDATABLE)
        if ADMIN_ONLY.intersection(changes) and not caller.is_admin:
            fields = ", ".join(sorted(ADMIN_ONLY.intersection(changes)))
            raise PermissionDenied(f"only an administrator may change {fields}", "ADMIN_ONLY")
        user = await self._users.update(request.user.id, changes)
        return user_pb2.UpdateUserResponse(user=to_proto(user))


class UserInternalServicer(user_internal_pb2_grpc.UserInternalServiceServicer):
    def __init__(self, users: Users) -> None:
        self._users = users

    async def ValidateUser(
        self, request: user_internal_pb2.ValidateUserRequest, context: Context
    ) -> user_internal_pb2.ValidateUserResponse:
        user = await self._users.require_active(request.user_id)
        return user_internal_pb2.ValidateUserResponse(user=to_proto(user))


def register(server: grpc.aio.Server, runtime: Runtime) -> Sequence[str]:
    users = Users(runtime.db, runtime.page_tokens)
    user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(users), server)
    user_internal_pb2_grpc.add_UserInternalServiceServicer_to_server(
        UserInternalServicer(users), server
    )
    return [
        user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
        user_internal_pb2.DESCRIPTOR.services_by_name["UserInternalService"].full_name,
    ]


SPEC = ServiceSpec(
    name="user",
    default_port=DEFAULT_PORTS["user"],
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
