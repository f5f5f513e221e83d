"""The payment service: one payment per order, authorized, captured, voided and refunded
through a payment provider, each step idempotent on the order id."""
