"""Distributed training on standard engines: PyTorch DDP, FSDP2 (through accelerate) and DeepSpeed ZeRO.

lmtune adds no engine of its own. This package only decides and translates:

- env.py          which process this is (torchrun / accelerate launch / SLURM env vars), rank-0 gates
- launch.py       `lmtune train --nproc N`: the same command relaunched under torch.distributed.run
- strategy.py     the `distributed:` config section -> TrainingArguments (fsdp, fsdp_config, deepspeed),
                  and the up-front refusals and fast-path switches per strategy
- consolidate.py  the final model gathered to rank 0 and saved in the single-process run layout

train/ stays single-process shaped: it asks these modules whether it is the main process, what to
pass the Trainer, and how to save.
"""
