"""The Prometheus rules: valid (``promtool check rules``) and doing what they say (``promtool test rules``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package)")
    return path


def test_rules_are_valid():
    out = subprocess.run([_promtool(), "check", "rules", "prometheus/rules/gateway.yml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 19 rules found" in out.stdout


def test_rules_fire_and_stay_quiet_as_the_unit_tests_say():
    out = subprocess.run([_promtool(), "test", "rules", "prometheus/tests/gateway_test.yml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_config_is_valid():
    out = subprocess.run([_promtool(), "check", "config", "--syntax-only", "prometheus/prometheus.yml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
