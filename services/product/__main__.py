from services.common.server import main
from services.product.wiring import SPEC

main(SPEC)
