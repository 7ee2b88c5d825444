"""The tables (SQLAlchemy models) and the engines: the product's memory and its alibi.

Only `worker.store` (and the migrations) use them in the product."""

from models.db import make_engine, make_session_factory, normalise_url
from models.tables import (
    CLIENT_INSTRUCTION_ID_SEQUENCE,
    AuditEvent,
    Base,
    ClientInstruction,
    DeadLetter,
    DeadLetterOriginal,
    IdCounter,
    InboundMessage,
    Instruction,
    InstructionSet,
    MessageFailure,
    OutboxEvent,
    RateLimitBucket,
    RateLimitGrant,
    Submission,
)

__all__ = [
    "CLIENT_INSTRUCTION_ID_SEQUENCE",
    "AuditEvent",
    "Base",
    "ClientInstruction",
    "DeadLetter",
    "DeadLetterOriginal",
    "IdCounter",
    "InboundMessage",
    "Instruction",
    "InstructionSet",
    "MessageFailure",
    "OutboxEvent",
    "RateLimitBucket",
    "RateLimitGrant",
    "Submission",
    "make_engine",
    "make_session_factory",
    "normalise_url",
]
