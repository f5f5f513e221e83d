from services.common.migrate import run_env
from services.notification.models import NotificationBase

run_env(NotificationBase.metadata)
