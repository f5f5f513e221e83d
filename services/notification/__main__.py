from services.common.server import main
from services.notification.server import SPEC

main(SPEC)
