"""gRPC handlers of the notification service: the caller's rights and the proto in, a
use case, the proto out; nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from services.common.auth import require_owner
from services.common.interceptors import Context
from services.notification.convert import notification_to_proto
from services.notification.usecases import Notifications
from shop.notification.v1 import notification_pb2, notification_pb2_grpc


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, notifications: Notifications) -> None:
        self._notifications = notifications

    async def ListNotifications(
        self, request: notification_pb2.ListNotificationsRequest, context: Context
    ) -> notification_pb2.ListNotificationsResponse:
        require_owner(request.user_id)
        size = request.page_size if request.HasField("page_size") else None
        rows, next_token = await self._notifications.list_page(
            request.user_id, request.unread_only, size, request.page_token
        )
        return notification_pb2.ListNotificationsResponse(
            notifications=[notification_to_proto(r) for r in rows], next_page_token=next_token
        )

    async def MarkRead(
        self, request: notification_pb2.MarkReadRequest, context: Context
    ) -> notification_pb2.MarkReadResponse:
        require_owner(request.user_id)
        rows = await self._notifications.mark_read(request.user_id, list(request.notification_ids))
        return notification_pb2.MarkReadResponse(
            notifications=[notification_to_proto(r) for r in rows]
        )

    async def StreamNotifications(
        self, request: notification_pb2.StreamNotificationsRequest, context: Context
    ) -> AsyncIterator[notification_pb2.StreamNotificationsResponse]:
        require_owner(request.user_id)
        stream = self._notifications.stream_with_heartbeats(
            request.user_id, request.cursor, heartbeats=request.heartbeats
        )
        async with contextlib.aclosing(stream) as rows:  # closed with the call, not by GC
            async for row in rows:
                if row is None:
                    yield notification_pb2.StreamNotificationsResponse(heartbeat=True)
                    continue
                yield notification_pb2.StreamNotificationsResponse(
                    notification=notification_to_proto(row),
                    cursor=self._notifications.cursor_of(request.user_id, row),
                )
