from services.common.server import main
from services.payment.wiring import SPEC

main(SPEC)
