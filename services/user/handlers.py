"""gRPC handlers of the user service: the caller's rights and the proto in, a use case,
the proto out; nothing else."""

from __future__ import annotations

from services.common import fieldmask
from services.common.auth import require_admin, require_owner
from services.common.interceptors import Context
from services.user.convert import user_to_proto
from services.user.usecases import UPDATABLE, Users
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc


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
    def __init__(self, users: Users) -> None:
        self._users = users

    async def ValidateUser(
        self, request: user_internal_pb2.ValidateUserRequest, context: Context
    ) -> user_internal_pb2.ValidateUserResponse:
        user = await self._users.require_active(request.user_id)
        return user_internal_pb2.ValidateUserResponse(user=user_to_proto(user))
