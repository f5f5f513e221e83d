"""The order service: places orders across user and product, all or nothing, and announces them."""
