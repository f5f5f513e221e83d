from services.common.migrate import run_env
from services.payment.models import PaymentBase

run_env(PaymentBase.metadata)
