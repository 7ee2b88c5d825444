"""The bundled IBKR Funds & Banking simulator (reference §10): a real HTTP server (Starlette on
uvicorn), also usable in-process through an httpx transport.

    sandbox = Sandbox(SandboxConfig(port=0, speed=1.0, seed=7))
    sandbox.register_client(client_id="acme", key_id="main", public_key_pem=pem)
    sandbox.start()
    sandbox.base_url          # http://127.0.0.1:PORT
    sandbox.clock.advance(600)
    sandbox.stop()
"""

from ibkr_sandbox.config import SandboxConfig, Timings
from ibkr_sandbox.server import Sandbox
from ibkr_sandbox.transport import SandboxTransport

__all__ = ["Sandbox", "SandboxConfig", "SandboxTransport", "Timings"]
