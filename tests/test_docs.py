"""The documentation: the README stays a front door, and the mkdocs site builds with strict link checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
SETUP_COMMANDS = [
    'pip install torch==2.13.0 && pip install -e ".[export]" && tbps quickstart',
    'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q',
]
BENCHMARK_JSON = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines (limit {README_MAX_LINES}): move detail into a page under docs/")


def test_readme_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first, "README.md has no ```bash block"
    assert first[1].splitlines() == SETUP_COMMANDS


def test_readme_marks_the_results_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = text.find("<!-- results-table -->"), text.find("<!-- /results-table -->")
    assert 0 <= start < end, "README.md needs <!-- results-table --> ... <!-- /results-table --> around the table"
    assert "| R@1 |" in text[start:end]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    # Quiet the deprecation banners that mkdocs-material and its dependencies print.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strict(site):
    for page in ("index.html", "reference/cli/index.html", "reference/api/index.html", "model/index.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    for command in ("tbps-train", "tbps-export", "tbps-index", "tbps-rank"):
        assert f'id="{command}"' in cli, f"the CLI reference lacks {command}"
    assert "Sentinel" not in cli, "mkdocs-click's table style prints click 8.2's unset defaults: keep :style: plain"


@pytest.mark.parametrize("source", BENCHMARK_JSON, ids=lambda p: p.stem)
def test_every_benchmark_json_has_a_generated_page(site, source):
    page = site / "benchmarks" / source.stem / "index.html"
    assert page.is_file(), f"no site page for {source.name}: docs/gen_benchmarks.py renders one per JSON"
    html = page.read_text(encoding="utf-8")
    machine = json.loads(source.read_text(encoding="utf-8"))["machine"]
    assert "Machine" in html and machine["cpu"] in html, "the page does not state the machine"
    assert "<table>" in html, "the page has no table"


def test_the_docs_site_works_with_the_network_cut_to_this_machine(site):
    """The built site on an air-gapped machine: no font, script or style from another host, and the
    search (a web worker over the local index) finds a page."""
    from page_helpers import chromium, http_server, missing_browser, offline

    if (reason := missing_browser()) is not None:
        pytest.skip(reason)
    with chromium() as browser, http_server(site) as address, offline(browser) as (page, tried):
        base = f"http://{address}"
        page.goto(base + "/guides/footage/")
        heading = page.text_content("article h1")
        fonts = page.evaluate("getComputedStyle(document.querySelector('article')).fontFamily")
        page.goto(base + "/?q=calibrate")  # the search reads ?q= and opens with its results
        page.wait_for_selector(".md-search-result__item", timeout=20_000)
        found = page.eval_on_selector_all(".md-search-result__item a", "nodes => nodes.map(n => n.href)")
    assert tried == []  # nothing asked of any other host
    assert heading and "Roboto" not in fonts  # the theme's web font is off: the system's fonts
    assert found and all(url.startswith(base) for url in found)
