"""The notification service: notifications made from order events, listed or streamed."""
