from services.common.server import main
from services.user.wiring import SPEC

main(SPEC)
