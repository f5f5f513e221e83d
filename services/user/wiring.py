"""Builds the user service from the platform, explicitly and in order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.user.handlers import UserInternalServicer, UserServicer
from services.user.repository import SqlUserRepository
from services.user.usecases import Users
from shop.user.v1 import user_internal_pb2, user_internal_pb2_grpc, user_pb2, user_pb2_grpc


@dataclass(frozen=True)
class UserParts:
    users: Users


async def wire(platform: Platform) -> Wired[UserParts]:
    users = Users(SqlUserRepository(platform.db), platform.page_tokens)
    return Wired(
        parts=UserParts(users),
        servicers=[
            Servicer(
                user_pb2.DESCRIPTOR.services_by_name["UserService"],
                UserServicer(users),
                user_pb2_grpc.add_UserServiceServicer_to_server,
            ),
            Servicer(
                user_internal_pb2.DESCRIPTOR.services_by_name["UserInternalService"],
                UserInternalServicer(users),
                user_internal_pb2_grpc.add_UserInternalServiceServicer_to_server,
            ),
        ],
    )


SPEC = ServiceSpec(name="user", migrations=Path(__file__).parent / "migrations", wire=wire)
