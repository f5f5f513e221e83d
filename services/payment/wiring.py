"""Builds the payment service from the platform, explicitly and in order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.server import Platform, Servicer, ServiceSpec, Wired
from services.payment.handlers import PaymentInternalServicer, PaymentServicer
from services.payment.provider import SimulatedProvider
from services.payment.repository import SqlPaymentRepository
from services.payment.usecases import Payments
from shop.payment.v1 import (
    payment_internal_pb2,
    payment_internal_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
)


@dataclass(frozen=True)
class PaymentParts:
    payments: Payments
    provider: SimulatedProvider


async def wire(platform: Platform) -> Wired[PaymentParts]:
    # The simulated provider keeps its charges in the payment database; each of its calls
    # takes PAYMENT_PROVIDER_LATENCY_MS first.
    provider = SimulatedProvider(platform.db, platform.config.payment_provider_latency)
    payments = Payments(SqlPaymentRepository(platform.db), provider, platform.page_tokens)
    return Wired(
        parts=PaymentParts(payments, provider),
        servicers=[
            Servicer(
                payment_pb2.DESCRIPTOR.services_by_name["PaymentService"],
                PaymentServicer(payments),
                payment_pb2_grpc.add_PaymentServiceServicer_to_server,
            ),
            Servicer(
                payment_internal_pb2.DESCRIPTOR.services_by_name["PaymentInternalService"],
                PaymentInternalServicer(payments),
                payment_internal_pb2_grpc.add_PaymentInternalServiceServicer_to_server,
            ),
        ],
    )


SPEC = ServiceSpec(name="payment", migrations=Path(__file__).parent / "migrations", wire=wire)
