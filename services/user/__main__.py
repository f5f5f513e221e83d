from services.common.server import main
from services.user.server import SPEC

main(SPEC)
