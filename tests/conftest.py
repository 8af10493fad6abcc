"""Helpers every test directory shares (tests/mounts.py) import by their module name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
