from services.common.migrate import run_env
from services.order.models import OrderBase

run_env(OrderBase.metadata)
