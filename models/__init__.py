"""SQLAlchemy models and the database helpers: the product's memory and its alibi."""

from models.db import (
    is_postgresql,
    make_engine,
    make_session_factory,
    next_client_instruction_id,
    normalise_url,
)
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
    "is_postgresql",
    "make_engine",
    "make_session_factory",
    "next_client_instruction_id",
    "normalise_url",
]
