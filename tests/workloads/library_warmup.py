"""A library's warm steps against the real library, as a rank and a warm spare run them.

`python library_warmup.py rank`: uses DeepSpeed's CPU FusedAdam as a script would (its first
construction JIT-loads the `fused_adam` op) and prints, as JSON, what the warm-step registry
says this process loaded (launcher/worker/library_warmups.py: loaded_by_libraries).
`python library_warmup.py spare warm|cold LIBRARY NAME ...` (pairs): a fresh process that
imported what the rank imported; `warm` applies the warm steps for the pairs, as a spare
does before it is promoted, `cold` does not. Then the script's part: one FusedAdam step,
with an audit hook counting the subprocesses started meanwhile (py-cpuinfo and ninja's, when
the op is loaded there). Prints JSON: {"failures", "subprocesses", "loaded", "same_op"}.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

from launcher.worker.library_warmups import loaded_by_libraries, warm_library


def fused_adam_step() -> Any:
    from deepspeed.ops.adam import FusedAdam

    model = torch.nn.Linear(4, 2)
    optimizer = FusedAdam(model.parameters(), lr=0.1)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return optimizer


def main() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops.adam  # noqa: F401  (what the rank had imported: the spare imports it too)

    role = sys.argv[1]
    if role == "rank":
        fused_adam_step()
        print(json.dumps({"loaded": loaded_by_libraries(sys.modules)}))
        return
    mode, pairs = sys.argv[2], sys.argv[3:]
    failures = []
    if mode == "warm":
        for library, name in zip(pairs[::2], pairs[1::2]):
            failures.append(warm_library(sys.modules, library, name))
    from deepspeed.ops.op_builder.builder import OpBuilder

    before = dict(OpBuilder._loaded_ops)
    started: list[str] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen":
            started.append(" ".join(map(str, args[1]))[:120])

    sys.addaudithook(audit)
    optimizer = fused_adam_step()
    print(
        json.dumps(
            {
                "failures": [f for f in failures if f],
                "subprocesses": started,
                "loaded": sorted(before),
                # The script's FusedAdam uses the op the warm step loaded, not a second load.
                "same_op": "fused_adam" in before
                and optimizer.multi_tensor_adam is before["fused_adam"].multi_tensor_adam,
            }
        )
    )


if __name__ == "__main__":
    main()
