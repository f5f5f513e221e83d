"""The product service: the catalogue and its stock, with atomic, idempotent reservations."""
