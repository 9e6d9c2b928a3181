"""The README stays true to the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

from echokit.settings import markdown_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_configuration_table_matches_the_settings_the_services_read():
    """The README's settings table is exactly what `python -m echokit.settings` generates."""
    block = re.search(r"<!-- settings-table:start[^>]*-->\n(.*?)<!-- settings-table:end -->", README, re.S)
    assert block is not None, "settings table markers missing from README.md"
    assert block.group(1).strip() == markdown_table()


def test_readme_names_the_documents_commands_and_the_two_project_commands():
    """A new user finds the document's commands and the two scripts in the README."""
    for command in (
        "python service_a/app.py",
        "python service_b/app.py",
        "pip install -r requirements.txt",
        "./test_scenarios.sh",
        "pytest tests/",
        "./scripts/start",
        "./scripts/test",
    ):
        assert command in README
