"""ibkr-worker: moves money and positions through IBKR's Funds & Banking Web API, exactly once."""

__version__ = "0.1.0"
