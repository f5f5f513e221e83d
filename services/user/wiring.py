"""Builds the user service from the platform, explicitly and in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import signing_kid
from services.common.config import ServiceConfig
from services.common.events.feed import Feed, OutboxReader
from services.common.events.outbox import NoSink, Relay
from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.user.handlers import AuthServicer, UserInternalServicer, UserServicer
from services.user.models import OutboxRow
from services.user.repository import SqlCredentialRepository, SqlUserRepository
from services.user.signin import Passwords, SignIns, TokenSigner
from services.user.usecases import Users
from shop.user.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    user_internal_pb2,
    user_internal_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

log = logging.getLogger("shop.user")


@dataclass(frozen=True)
class UserParts:
    users: Users
    sign_ins: SignIns
    # Stamps the outbox's feed positions (the feed is the user events' only transport).
    relay: Relay


def token_signer(config: ServiceConfig) -> TokenSigner | None:
    """The access-token signer of the built-in sign-in; None (sign-in off) when there is
    no private key (an identity provider signs the tokens)."""
    path = config.auth.private_key_file
    if path is None:
        return None
    if not path.is_file():
        log.warning("built-in sign-in is off: no private key", extra={"path": str(path)})
        return None
    pem = path.read_bytes()
    return TokenSigner(
        private_pem=pem,
        kid=signing_kid(pem, config.auth),
        issuer=config.auth.issuer,
        audience=config.auth.audience,
        ttl=config.sign_in.access_token_ttl,
    )


async def wire(platform: Platform) -> Wired[UserParts]:
    config = platform.config
    # The user service's events are read over its feed (StreamUserEvents), whatever the
    # broker: a follower then knows whether it has caught up and is still following,
    # which is what lets the order service trust its replica of users' statuses.
    feed = Feed(OutboxReader(platform.db, OutboxRow))

    relay = Relay(platform.db, OutboxRow, NoSink(), name="user", on_published=feed.on_published)
    relay.export(platform.metrics)
    repository = SqlUserRepository(platform.db, relay.wake)
    users = Users(repository, platform.page_tokens)
    sign_ins = SignIns(
        repository,
        SqlCredentialRepository(platform.db, relay.wake),
        Passwords(),
        token_signer(config),
        config.sign_in,
    )
    return Wired(
        parts=UserParts(users, sign_ins, relay),
        servicers=[
            Servicer(
                auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
                AuthServicer(sign_ins, trust_forwarded_address=not config.tls.enabled),
                auth_pb2_grpc.add_AuthServiceServicer_to_server,
            ),
            Servicer(
                user_pb2.DESCRIPTOR.services_by_name["UserService"],
                UserServicer(users),
                user_pb2_grpc.add_UserServiceServicer_to_server,
            ),
            Servicer(
                user_internal_pb2.DESCRIPTOR.services_by_name["UserInternalService"],
                UserInternalServicer(users, feed),
                user_internal_pb2_grpc.add_UserInternalServiceServicer_to_server,
            ),
        ],
        background=[relay.run],
    )


SPEC = ServiceSpec(name="user", migrations=Path(__file__).parent / "migrations", wire=wire)
