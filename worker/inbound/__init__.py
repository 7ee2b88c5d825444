"""The inbound edge: what an arriving message may be before dramatiq or our code acts on it.

- `arrival`: the raw bytes judged (size, UTF-8, JSON, depth, values, numbers, the dramatiq
  envelope); producer-set options are dropped here. Pure, no dramatiq.
- `edge`: dramatiq wiring: the decoder, brokers whose consumers hold decoded messages within
  a byte budget, and the middleware list (none that reads options).
- `context`: `MessageContext`, the middleware that binds a message's ids to the log for its
  duration and tells the actor whether the same message is in hand on another thread.
- `retries`: our own count of a message's failures (the database, by message id), the backoff,
  and the dead letter after the last one.
"""
