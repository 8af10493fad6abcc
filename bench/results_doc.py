"""Where a benchmark's results go: <out>.json and <out>.md, and docs/benchmarks.md between its
markers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BENCHMARKS_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_results(out: Path, report: dict[str, Any], text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)


def quote_in_doc(name: str, markdown: str, doc: Path = BENCHMARKS_DOC) -> bool:
    """Replace the block between <!-- results:NAME --> markers; False if there are none."""
    text = doc.read_text()
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return False
    doc.write_text(pattern.sub(lambda _: f"{begin}\n{markdown.rstrip()}\n{end}", text))
    return True


def publish(name: str, out: Path, default_out: Path, report: dict[str, Any], text: str) -> None:
    """Write the results; quote them in docs/benchmarks.md only from a run with the default --out
    (quick runs elsewhere leave it alone); print them."""
    write_results(out, report, text)
    if out.resolve() == default_out.resolve():
        quote_in_doc(name, text)
    print(text)
