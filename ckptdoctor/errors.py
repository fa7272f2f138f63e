"""Every error ckptdoctor raises on purpose: one base, one subclass per kind, each message one line.

The CLI turns any of them into that line on stderr and exit code 2 (policy.ExitCode.ERROR); library users
catch the kind they care about."""

from __future__ import annotations


class CkptDoctorError(Exception):
    """Something ckptdoctor could not do; the message is one line naming the file and what is wrong."""


class CheckpointError(CkptDoctorError):
    """A checkpoint could not be read at all (damage inside a readable file is a finding instead)."""


class ConfigError(CkptDoctorError):
    """The policy (pyproject.toml's [tool.ckptdoctor] or --config) or a command's arguments are invalid."""


class OutputError(CkptDoctorError):
    """A report or checkpoint could not be written where asked; nothing was written there."""


class MissingExtraError(CkptDoctorError):
    """An optional dependency (the [tf] extra) is needed and not installed."""


class ModelError(CkptDoctorError):
    """The model a command restores into (--meta-graph, --model) cannot be found, imported or built."""
