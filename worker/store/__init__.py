"""The store: every statement of the tracking domain, and the batching that makes them cheap.

The services (`worker.tracking`, the actors, the scheduler, the CLI) get plain dataclasses
(`worker.store.rows`) from the functions of this package and import no SQLAlchemy: a module
per table family (`tracked`, `ibkr`, `events`, `deadletters`, `queries`, `metrics`,
`ratelimit`), ids drawn before the rows are written (`ids`), one way to write a row
(`database.Tx`, over `batched`), the store's errors (`errors`), the group commit (`group`)
and the schema's migrations (`migrate`).
"""

from worker.store.database import Store, Tx

__all__ = ["Store", "Tx"]
