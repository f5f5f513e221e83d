from services.common.server import main
from services.product.server import SPEC

main(SPEC)
