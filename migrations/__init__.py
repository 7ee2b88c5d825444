"""Alembic migrations, shipped inside the package so `ibkr-worker migrate` works anywhere."""
