from services.common.migrate import run_env
from services.product.models import ProductBase

run_env(ProductBase.metadata)
