"""The OpenMP idle-spin default is set before torch loads libgomp, and never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ember.omp_defaults import SPIN_COUNT

PRINT_SPIN = "import os; {pre}import ember; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spin_seen(pre: str = "", **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", PRINT_SPIN.format(pre=pre)], env={**clean, **env},
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip()


def test_importing_ember_first_sets_the_spin_default():
    assert _spin_seen() == SPIN_COUNT


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_a_policy_the_user_set_is_kept(env):
    assert _spin_seen(**env) == env.get("GOMP_SPINCOUNT", "None")


def test_nothing_is_set_once_torch_is_loaded():
    """libgomp has read its environment by then: setting it would only mislead the logs."""
    assert _spin_seen(pre="import torch; ") == "None"
