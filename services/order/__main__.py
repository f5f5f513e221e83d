from services.common.server import main
from services.order.wiring import SPEC

main(SPEC)
