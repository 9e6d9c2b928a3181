"""The README and docs/ stay true to the code and to each other."""

from __future__ import annotations

import re

from echokit.settings import configuration_page
from tests.support.harness import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_configuration_page_is_what_the_settings_table_generates():
    """docs/configuration.md is exactly what `python -m echokit.settings` prints."""
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == configuration_page(), "regenerate it: python -m echokit.settings > docs/configuration.md"


def test_readme_fits_the_first_screens():
    """The README is a first screen and links, at most 200 lines; the rest lives in docs/."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_readme_names_the_documents_commands_and_the_two_project_commands():
    """A new user finds the document's commands and the two scripts in the README."""
    text = README.read_text(encoding="utf-8")
    for command in (
        "python service_a/app.py",
        "python service_b/app.py",
        "pip install -r requirements.txt",
        "./test_scenarios.sh",
        "pytest tests/",
        "./scripts/start",
        "./scripts/test",
    ):
        assert command in text


def test_every_relative_link_in_readme_and_docs_points_at_a_file():
    """No README or docs/ link leads to a missing file."""
    broken = []
    for page in [README, *DOCS]:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken
