"""Records what a worker holds when the script starts: loaded modules, frozen objects."""

import gc
import json
import os
import sys

if __name__ == "__main__":
    out = os.path.join(sys.argv[1], f"rank_{os.environ['RANK']}.json")
    with open(out, "w") as handle:
        seen = {"dynamo": "torch._dynamo" in sys.modules, "frozen": gc.get_freeze_count()}
        json.dump(seen, handle)
