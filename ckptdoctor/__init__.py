"""ckptdoctor: inspect, check, repair and verify TensorFlow and Keras checkpoints."""

from __future__ import annotations

__version__ = "0.1.0"

from ckptdoctor.diagnose import check, inspect

__all__ = ["__version__", "check", "inspect"]
