"""Copy a benchmark's markdown result into README.md between its markers."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quote_in_readme(name: str, markdown: str, readme: Path = README) -> bool:
    """Replace the block between <!-- results:NAME --> markers; False if there are none."""
    text = readme.read_text()
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{markdown.rstrip()}\n{end}", text))
    return True
