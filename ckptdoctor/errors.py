"""Every error ckptdoctor raises on purpose: one base, one subclass per kind, each message one line.

The CLI turns any of them into that line on stderr and exit code 2 (policy.ExitCode.ERROR); library users
catch the kind they care about."""

from __future__ import annotations

import re


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


def message_line(message: str, limit: int = 200, prefer: re.Pattern[str] | None = None) -> str:
    """One line of a message for a one-line error: its first non-empty line, or the first that matches
    `prefer` (TensorFlow and Keras wrap the useful line in paragraphs of advice), cut at `limit`."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    line = next((line for line in lines if prefer.search(line)), lines[0]) if prefer else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def first_line(error: BaseException, limit: int = 200, prefer: re.Pattern[str] | None = None) -> str:
    """What an error says, in one line (see `message_line`); its type's name where it says nothing."""
    return message_line(str(error), limit, prefer) or type(error).__name__
