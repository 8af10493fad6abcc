"""In-memory snapshots from inside the frameworks' own checkpoint calls (docs/frameworks.md).

One module per framework, each importing its framework itself, so that `launcher` needs none:
- `launcher.integrations.dcp`: a `torch.distributed.checkpoint` StorageWriter/StorageReader pair;
- `launcher.integrations.lightning`: a Lightning `Callback`;
- `launcher.integrations.hf`: a Hugging Face `TrainerCallback`.
"""
