"""Records the global nn.Module hooks a worker runs the script with, and whether
torch.compile warns about global hooks on a compiled module's calls."""

import json
import os
import sys
import warnings

import torch

if __name__ == "__main__":
    module_hooks = torch.nn.modules.module
    model = torch.compile(
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), backend="eager"
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for _ in range(2):
            model(torch.ones(2, 4)).sum().backward()
            optimizer.step()
    seen = {
        "forward_hooks": len(module_hooks._global_forward_hooks),
        "forward_pre_hooks": len(module_hooks._global_forward_pre_hooks),
        "global_hook_warnings": sum("global hooks" in str(w.message) for w in shown),
    }
    with open(os.path.join(sys.argv[1], f"rank_{os.environ['RANK']}.json"), "w") as handle:
        json.dump(seen, handle)
