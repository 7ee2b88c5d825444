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
    Instruction,
    InstructionSet,
    MessageFailure,
    OutboxEvent,
    RateLimitSlot,
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
    "Instruction",
    "InstructionSet",
    "MessageFailure",
    "OutboxEvent",
    "RateLimitSlot",
    "Submission",
    "is_postgresql",
    "make_engine",
    "make_session_factory",
    "next_client_instruction_id",
    "normalise_url",
]
