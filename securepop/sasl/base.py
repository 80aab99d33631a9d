"""
Values a SASL exchange step returns, and the tiny helpers every mechanism uses.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Challenge:
    """Server data for the next C{+ base64} continuation line."""

    data: bytes
