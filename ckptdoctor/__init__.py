"""ckptdoctor: inspect, check, repair and verify TensorFlow and Keras checkpoints.

The public API is what `__all__` names, plus `ckptdoctor.patch.patch` (the module keeps the name the
command has); every other module is internal. Names are imported on first use, so
`import ckptdoctor` stays cheap (the CLI's start-up time counts in CI loops)."""

from __future__ import annotations

import importlib

# `typing` costs ~3 ms to import (with what it imports, re aside), and `--help` needs nothing from it; type
# checkers and linters treat any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "inspect": "ckptdoctor.diagnose",
    "check": "ckptdoctor.diagnose",
    "gate": "ckptdoctor.gate",
    "Verdict": "ckptdoctor.gate",
    "Unreadable": "ckptdoctor.gate",
    "verify_meta_graph": "ckptdoctor.verify",
    "verify_model": "ckptdoctor.verify",
    "VerifyResult": "ckptdoctor.verify",
    "Policy": "ckptdoctor.policy",
    "load_policy": "ckptdoctor.policy",
    "ExitCode": "ckptdoctor.policy",
    "Report": "ckptdoctor.model",
    "Variable": "ckptdoctor.model",
    "BatchNormLayer": "ckptdoctor.model",
    "Finding": "ckptdoctor.model",
    "Role": "ckptdoctor.model",
    "Severity": "ckptdoctor.model",
    "CkptDoctorError": "ckptdoctor.errors",
    "CheckpointError": "ckptdoctor.errors",
    "ConfigError": "ckptdoctor.errors",
    "OutputError": "ckptdoctor.errors",
    "MissingExtraError": "ckptdoctor.errors",
    "ModelError": "ckptdoctor.errors",
}

__all__ = [
    "BatchNormLayer",
    "CheckpointError",
    "CkptDoctorError",
    "ConfigError",
    "ExitCode",
    "Finding",
    "MissingExtraError",
    "ModelError",
    "OutputError",
    "Policy",
    "Report",
    "Role",
    "Severity",
    "Unreadable",
    "Variable",
    "Verdict",
    "VerifyResult",
    "__version__",
    "check",
    "gate",
    "inspect",
    "load_policy",
    "verify_meta_graph",
    "verify_model",
]

if TYPE_CHECKING:
    from typing import Any

    from ckptdoctor.diagnose import check, inspect
    from ckptdoctor.errors import (
        CheckpointError,
        CkptDoctorError,
        ConfigError,
        MissingExtraError,
        ModelError,
        OutputError,
    )
    from ckptdoctor.gate import Unreadable, Verdict, gate
    from ckptdoctor.model import BatchNormLayer, Finding, Report, Role, Severity, Variable
    from ckptdoctor.policy import ExitCode, Policy, load_policy
    from ckptdoctor.verify import VerifyResult, verify_meta_graph, verify_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptdoctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
