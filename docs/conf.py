"""Sphinx configuration of the mcpi documentation site.

Build it (from the repository root, after ``pip install -e '.[docs]'``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error, as ``.ci/run`` does: a broken link, a
reference to a moved page or a docstring autodoc cannot read fails the build.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "mcpi"
author = "the mcpi authors"
copyright = "2026, the mcpi authors"
release = _version("mcpi-trio")
version = release

extensions = [
    "myst_parser",  # the pages are Markdown (MyST), as the README is
    "sphinx.ext.autodoc",  # the Python API from the docstrings
    "argparse_help",  # the CLI reference from the argparse parsers themselves (docs/_ext)
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# protocol.md (included whole into protocol page) links to its own sections by their
# GitHub-style anchors ("#2-framing"); MyST makes the same ones for headings to depth 3.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

html_theme = "furo"
html_title = f"mcpi {release}"
html_static_path: list[str] = []


def _plain_text_for_labelled_blocks(app: Sphinx, doctree: nodes.document) -> None:
    """protocol.md labels its test vectors' code blocks (```golden:hello, golden-kernels):
    the tests find them by that label. They are hex and tables, not a language: show
    them as text instead of warning that no lexer is called "golden:hello"."""
    for block in doctree.findall(nodes.literal_block):
        if str(block.get("language", "")).startswith("golden"):
            block["language"] = "text"


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", _plain_text_for_labelled_blocks)
