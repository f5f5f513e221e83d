from services.common.server import main
from services.notification.wiring import SPEC

main(SPEC)
