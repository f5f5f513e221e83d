from services.common.migrate import run_env
from services.user.models import UserBase

run_env(UserBase.metadata)
