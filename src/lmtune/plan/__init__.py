"""Planning a run before spending on it: memory, time and cost per GPU type and world size.

- source.py: the model's shapes, read without weights or torch (config.json, GGUF metadata)
- spec.py: the model with its method on, as counts per layer (from the numbers, or a meta model)
- estimate.py: one process's memory, term by term (what `train.gradient_checkpointing: auto` asks)
- memory.py: memory sizes, and what this machine has
- scale.py: per device under DDP, ZeRO-1/2/3, FSDP and CPU offload; step time from FLOPs; cost
- hardware.py + gpus.json + prices.json: GPU specs and an editable price table, as data
"""
