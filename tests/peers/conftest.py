"""Peer-parity tests share the session fixtures of tests/conftest.py and the helpers of tests/trainer_helpers.py."""

from trainer_helpers import cpu_kwargs, logged

__all__ = ["cpu_kwargs", "logged"]
