"""The OpenMP idle-spin default applies to this process's libgomp only, never over the user's
choice, and never leaks into the environment of processes started later."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ember.omp_defaults import SPIN_COUNT

PROBE = ("import json, os, subprocess, sys; {pre}import ember; ember.LLM; "
         "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\\'GOMP_SPINCOUNT\\'))'], "
         "capture_output=True, text=True).stdout.strip(); "
         "print(json.dumps({{'applied': ember.omp_defaults.applied, 'env': os.environ.get('GOMP_SPINCOUNT'), "
         "'child': child}}))")


def _probe(pre: str = "", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env={**clean, **env},
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ember_s_api_loads_torch_with_the_spin_default_and_leaks_nothing():
    assert _probe() == {"applied": SPIN_COUNT, "env": None, "child": "None"}


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_a_policy_the_user_set_is_kept(env):
    seen = _probe(**env)
    assert seen["applied"] is None
    assert seen["env"] == env.get("GOMP_SPINCOUNT") and seen["child"] == env.get("GOMP_SPINCOUNT", "None")


def test_nothing_is_applied_once_torch_is_loaded():
    """libgomp has read its environment by then: claiming a default would mislead the logs."""
    assert _probe(pre="import torch; ")["applied"] is None


def test_the_cli_parses_its_arguments_without_loading_torch():
    """`ember --help` and argument errors answer at once: torch (3 s, more with inductor) loads
    only when a command runs."""
    code = ("import sys; from ember.entrypoints.cli import build_parser; import ember; "
            "build_parser().parse_args(['serve', '--port', '9']); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"
