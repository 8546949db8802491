"""docs/ is generated from bench/results/*.json and must not drift from it; the README's headline
numbers must be ones the generated pages show."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    assert _gen_docs().main(["--out", str(out)]) == 0
    return out


def test_docs_equal_the_generator_output(generated: Path):
    """Every committed page is exactly what scripts/gen_docs.py writes from the JSON, and no page is
    missing or left over. On failure: .venv/bin/python scripts/gen_docs.py, then commit docs/."""
    want = sorted(p.name for p in generated.glob("*.md"))
    have = sorted(p.name for p in DOCS.glob("*.md"))
    assert have == want, "docs/ pages differ from the generated set: run scripts/gen_docs.py"
    for name in want:
        assert (DOCS / name).read_text() == (generated / name).read_text(), (
            f"docs/{name} is stale: run .venv/bin/python scripts/gen_docs.py"
        )


def test_check_mode_detects_a_stale_page(generated: Path, tmp_path: Path):
    """--check fails when a page was edited by hand (so the guard above can fail), passes otherwise."""
    gen = _gen_docs()
    for p in generated.glob("*.md"):
        (tmp_path / p.name).write_text(p.read_text())
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0
    page = tmp_path / "e2e.md"
    page.write_text(page.read_text().replace("1.60×", "1.70×"))
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1


def test_every_result_file_is_rendered(generated: Path):
    """A new bench/results/*.json shows up in the index; it must also get a page."""
    index = (generated / "index.md").read_text()
    assert "not rendered" not in index, "a result file has no docs page: add it to scripts/gen_docs.py"


def _headline_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Headline numbers", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n(?=- )", section)
    return [" ".join(i.split()) for i in items if i.startswith("- ")]


def test_readme_headline_numbers_come_from_the_docs(generated: Path):
    """Each bolded number of the README's headline list appears verbatim on the docs page the line
    links to (which in turn comes from the JSON)."""
    lines = _headline_lines()
    assert len(lines) >= 4
    for line in lines:
        links = re.findall(r"\]\(docs/([\w-]+\.md)\)", line)
        numbers = re.findall(r"\*\*([^*]+)\*\*", line)
        assert links and numbers, f"headline without a docs link or a bold number: {line}"
        pages = " ".join((generated / link).read_text() for link in links)
        for n in numbers:
            assert re.search(r"\d", n), f"bold text that is not a number: {n}"
            assert n in pages, f"README headline {n!r} is not on {links}: {line}"


def test_readme_is_short_and_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_pages_state_device_date_and_versions(generated: Path):
    for page in generated.glob("*.md"):
        if page.name == "index.md":
            continue
        text = page.read_text()
        assert "device **" in text and "date **" in text and "versions: " in text, page.name
        assert "Columns:" in text, f"{page.name} does not say what its columns mean"
