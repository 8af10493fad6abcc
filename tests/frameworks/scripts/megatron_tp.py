"""megatron-core tensor parallelism: an MLP of Column/RowParallelLinear split over the ranks.

As megatron-core's docs teach: torch.distributed.init_process_group, then
parallel_state.initialize_model_parallel, layers from megatron.core.tensor_parallel
with a TransformerConfig. CPU and gloo (use_cpu_initialization): megatron-core's
GPTModel and its pipeline schedules allocate on CUDA, its parallel layers do not.
Each rank saves its own shard every few steps and resumes from the newest step
every rank saved.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.transformer_config import TransformerConfig
from run_record import open_log, record_at_exit, step_loss
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--ckpt-every", type=int, default=10)
args = parser.parse_args()
RANK = int(os.environ["RANK"])
log = open_log(args.out, RANK)
result: dict[str, Any] = {}
record_at_exit(args.out, RANK, result)


class ParallelMLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        init = nn.init.xavier_normal_
        self.up = tensor_parallel.ColumnParallelLinear(
            64, 256, config=config, init_method=init, bias=True, gather_output=False
        )
        self.down = tensor_parallel.RowParallelLinear(
            256,
            1,
            config=config,
            init_method=init,
            bias=True,
            input_is_parallel=True,
            skip_bias_add=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.up(x)
        out, _ = self.down(torch.relu(hidden))
        return out


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batch (every tensor-parallel rank reads the same one)."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(step))
    return x, x.sum(dim=1, keepdim=True).sin()


def main() -> None:
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=dist.get_world_size())
    torch.manual_seed(0)
    config = TransformerConfig(
        num_layers=1, hidden_size=64, num_attention_heads=1, use_cpu_initialization=True
    )
    model = ParallelMLP(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt_dir = Path(args.out) / "ckpt"
    world = dist.get_world_size()
    complete = [
        p
        for p in ckpt_dir.glob("step_*")
        if all((p / f"rank_{r}.pt").exists() for r in range(world))
    ]
    saved = sorted(complete, key=lambda p: int(p.name.split("_")[1]))
    start = 0
    if saved:
        state = torch.load(saved[-1] / f"rank_{RANK}.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        start = int(saved[-1].name.split("_")[1])
    log.info("start rank %d resume %s", RANK, start)
    for step in range(start + 1, args.steps + 1):
        inputs, targets = batch(step)
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_loss(log, result, step, loss.item())
        if step % args.ckpt_every == 0:
            path = ckpt_dir / f"step_{step}"
            path.mkdir(parents=True, exist_ok=True)
            state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
            torch.save(state, path / f"rank_{RANK}.tmp")
            os.replace(path / f"rank_{RANK}.tmp", path / f"rank_{RANK}.pt")
    log.info("finished step %s loss %s", result.get("step"), result.get("loss"))
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
