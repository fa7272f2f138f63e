"""inspect, check and patch never import TensorFlow; a listing imports neither numpy nor h5py."""

from __future__ import annotations

import subprocess
import sys

from conftest import FIXTURE_BUNDLES, TF1, run_cli


def _blocked_env(tmp_path) -> dict[str, str]:
    """An environment in which `import tensorflow` fails, as in an install without the [tf] extra."""
    blocker = tmp_path / "blocked" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is not installed here')\n")
    return {"PYTHONPATH": str(blocker.parent)}  # first on the path: see conftest.cli_env


def test_inspect_check_patch_work_without_tensorflow(tmp_path):
    env = _blocked_env(tmp_path)
    trainable, full = FIXTURE_BUNDLES["finetune_trainable"], FIXTURE_BUNDLES["finetune_full"]
    assert run_cli("inspect", full, env=env).returncode == 0
    assert run_cli("check", trainable, env=env).returncode == 1
    out = tmp_path / "fixed"
    patched = run_cli("patch", trainable, "--from", full, "--out", out, env=env)
    assert patched.returncode == 0, patched.stderr
    assert run_cli("check", out, env=env).returncode == 0


def test_listing_imports_neither_numpy_nor_tensorflow():
    code = (
        "import sys\n"
        "from ckptdoctor import inspect\n"
        f"report = inspect({str(TF1 / 'finetune_full')!r})\n"
        "assert len(report.variables) == 35\n"
        "print(sorted(m for m in ('numpy', 'h5py', 'tensorflow', 'rich', 'fsspec', 'aiohttp') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
