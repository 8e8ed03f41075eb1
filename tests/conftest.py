"""Shared fixtures: hypothesis profiles, the small public demo, and a real browser.

Hypothesis profiles: ``ci`` (loaded by default) runs a few dozen examples per property, the same
ones every run (derandomized, no example database), so the suite stays fast and repeatable;
``thorough`` runs 500 random ones per property (issue 15's bar for the bad-input suite):

    python -m pytest tests/test_bad_input.py --hypothesis-profile=thorough --hypothesis-show-statistics
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# every property drives a real service (and a launched page): seconds, not the deadline's 200 ms
_PROPERTY = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, derandomize=True, **_PROPERTY)
settings.register_profile("thorough", max_examples=500, **_PROPERTY)
settings.load_profile("ci")  # --hypothesis-profile, read after this file, overrides it

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """The small demo (``demo_support``), shared by every test of the session that needs one."""
    from demo_support import small_demo  # deferred: it imports the app, and gradio with it

    with small_demo(tmp_path_factory.mktemp("small-demo") / "out") as demo:
        yield demo


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
