"""The floor: a bare dramatiq actor on the same broker that makes the same signed POST to the
same sandbox per message and stores nothing.

Run as `dramatiq bench.floor --processes P --threads T` with the product's settings in the
environment (BROKER_URL, IBKR_*). Like the product's entry module, this one must set up the
broker when dramatiq's CLI imports it, so it reads the settings at import. The key is parsed
once per process and the access token fetched once (then cached), as the product does.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import httpx
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.common import FLOOR_ACTOR, FLOOR_QUEUE
from worker.clock import SystemClock
from worker.config import load_settings
from worker.ibkr.auth import IbkrAuth
from worker.ibkr.client import http_transport
from worker.ibkr.endpoints import INTERNAL_CASH_TRANSFERS
from worker.ibkr.signing import BodySigner, load_private_key

_settings = load_settings()
_client_id, _key_id, _key_path = _settings.require_ibkr_credentials()
_key = load_private_key(_key_path)
_clock = SystemClock()
_signer = BodySigner(_key, _client_id, _key_id, _clock)
_http = httpx.Client(
    base_url=_settings.ibkr_base_url,
    timeout=httpx.Timeout(_settings.http_timeout_s),
    headers={"Accept": "application/json", "User-Agent": "ibkr-worker-floor"},
    transport=http_transport(),
)
_auth = IbkrAuth(
    post_form=lambda url, form: _http.post(url, data=form, headers={"Accept": "application/json"}),
    token_url=_settings.ibkr_token_url,
    client_id=_client_id,
    key_id=_key_id,
    private_key=_key,
    scope=_settings.ibkr_scope,
    audience=_settings.ibkr_assertion_audience,
    clock=_clock,
)

# A bare RabbitMQ broker with publisher confirms and no middleware: the least dramatiq needs to
# hand a message to an actor (the product's inbound edge is part of what the pipeline costs).
broker = RabbitmqBroker(url=_settings.broker_url, confirm_delivery=True, middleware=[])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=FLOOR_ACTOR, queue_name=FLOOR_QUEUE)
def floor_post(request: dict[str, Any], correlation_id: str | None = None) -> None:
    """Sign `request` and POST it; the answer is read and dropped."""
    del correlation_id
    content = _signer.sign(request).encode("ascii")
    response = _http.post(
        INTERNAL_CASH_TRANSFERS.path,
        content=content,
        headers={
            "Content-Type": "application/jwt",
            "Authorization": f"Bearer {_auth.access_token()}",
        },
    )
    response.read()
