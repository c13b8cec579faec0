"""The test suite's own rules: under CI=true a skip is a failure, markers are declared."""

from __future__ import annotations

from helpers.snake import ROOT

SKIPPING = """
import pytest

def test_needs_a_service():
    pytest.skip("the service did not come up")

def test_needs_a_package():
    pytest.importorskip("a_package_that_is_not_installed")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


def _suite(pytester):
    pytester.makeconftest((ROOT / "tests/conftest.py").read_text())
    pytester.syspathinsert(ROOT / "tests")  # conftest imports tests/helpers
    pytester.makepyfile(test_skipping=SKIPPING)


def test_under_ci_a_skip_fails_naming_its_reason(pytester, monkeypatch):
    _suite(pytester)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true*the service did not come up*",
                                 "*skipped under CI=true*a_package_that_is_not_installed*"])


def test_outside_ci_a_skip_stays_a_skip(pytester, monkeypatch):
    _suite(pytester)
    monkeypatch.delenv("CI", raising=False)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=2, xfailed=1)


def test_no_test_module_imports_another_one():
    """Shared code lives in tests/helpers (or conftest.py), so a test module runs on its own."""
    import ast

    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == []
