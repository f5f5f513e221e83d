from services.common.server import main
from services.order.server import SPEC

main(SPEC)
