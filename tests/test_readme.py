"""The docs stay true: the config reference is the schema's, the README's set-up is what CI runs."""
from pathlib import Path

from psp.config import REFERENCE_END, REFERENCE_START, markdown_reference

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "configuration.md"


def test_config_reference_matches_schema():
    text = CONFIG_DOC.read_text()
    assert REFERENCE_START in text and REFERENCE_END in text, f"{CONFIG_DOC}: config reference markers missing"
    body = text.split(REFERENCE_START, 1)[1].split(REFERENCE_END, 1)[0].strip()
    assert body == markdown_reference(), (
        "docs/configuration.md config reference is stale: "
        "run `psp config update-docs`")


def test_setup_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make setup", "make test"):
        assert command in readme and command in ci
