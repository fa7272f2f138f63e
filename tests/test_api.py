"""The public library API: what `__all__` promises, the verdict `gate` reaches, errors by kind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import FIXTURE_BUNDLES, KERAS_FILES, run_cli

import ckptdoctor
from ckptdoctor import ConfigError, ExitCode, Severity, gate, load_policy
from ckptdoctor.errors import CheckpointError, CkptDoctorError


def test_every_public_name_resolves():
    for name in ckptdoctor.__all__:
        assert getattr(ckptdoctor, name) is not None
    assert sorted(dir(ckptdoctor)) == sorted(ckptdoctor.__all__)
    with pytest.raises(AttributeError):
        ckptdoctor.no_such_name  # noqa: B018


def test_import_is_light():
    code = "import sys, ckptdoctor; print(sorted(m for m in sys.modules if m.startswith(('ckptdoctor', 'numpy'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['ckptdoctor']"


def test_gate_reaches_the_same_verdict_as_the_cli(tmp_path):
    paths = [str(FIXTURE_BUNDLES["finetune_full"]), str(FIXTURE_BUNDLES["finetune_trainable"])]
    verdict = gate(paths)
    assert verdict.exit_code is ExitCode.FINDINGS
    assert [len(r.findings) for r in verdict.reports] == [0, 4]
    cli = run_cli("check", *paths, "--format", "json")
    assert cli.returncode == verdict.exit_code


def test_gate_applies_the_policy_and_its_threshold(tmp_path):
    config = tmp_path / "policy.toml"
    config.write_text('fail-on = "warning"\nignore = ["BN001"]\n')
    policy = load_policy(str(config))
    verdict = gate([FIXTURE_BUNDLES["finetune_trainable"]], policy=policy)
    assert verdict.reports[0].findings == ()
    assert verdict.fail_on is Severity.WARNING and verdict.exit_code is ExitCode.OK
    noupdate = [FIXTURE_BUNDLES["finetune_noupdate"]]
    reference = FIXTURE_BUNDLES["pretrained"]
    assert gate(noupdate, reference=reference, policy=policy).exit_code is ExitCode.FINDINGS  # BN003 is a warning
    assert gate(noupdate, reference=reference, policy=policy, fail_on=Severity.ERROR).exit_code is ExitCode.OK


def test_an_unreadable_path_is_exit_2_and_the_others_are_still_reported(tmp_path):
    verdict = gate([tmp_path / "missing.ckpt", FIXTURE_BUNDLES["finetune_trainable"]])
    assert verdict.exit_code is ExitCode.ERROR
    assert [u.path for u in verdict.unreadable] == [str(tmp_path / "missing.ckpt")]
    assert len(verdict.reports) == 1 and len(verdict.reports[0].findings) == 4


def test_errors_by_kind(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("fail-on = [")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_policy(str(bad))
    with pytest.raises(CheckpointError, match="missing"):
        ckptdoctor.inspect(tmp_path / "missing")
    assert issubclass(ConfigError, CkptDoctorError) and issubclass(CheckpointError, CkptDoctorError)
    assert not issubclass(ConfigError, CheckpointError)  # a bad policy is not "a checkpoint could not be read"


def test_the_library_never_forks_or_loads_the_watchdog():
    code = (
        "import os, sys, ckptdoctor; pid = os.getpid(); "
        f"ckptdoctor.check({str(KERAS_FILES['healthy/model.keras'])!r}); "
        "print(os.getpid() == pid, 'ckptdoctor.watchdog' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_results_pickle_for_another_process(tmp_path):
    """Records cross process boundaries (a pool of checks): the default policy, a policy read from a file, and a
    verdict with its report survive pickling unchanged."""
    import pickle

    from ckptdoctor.policy import Policy

    config = tmp_path / "policy.toml"
    config.write_text('fail-on = "warning"\n[severity]\nBN001 = "info"\n')
    verdict = gate(str(FIXTURE_BUNDLES["finetune_trainable"]))
    for value in (Policy(), load_policy(str(config)), verdict):
        assert pickle.loads(pickle.dumps(value)) == value
