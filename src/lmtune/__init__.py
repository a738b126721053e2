"""lmtune: fine-tune language models on your own data.

Importing the package stays cheap (no torch, no transformers) so that the CLI answers fast;
heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"

import logging as _logging


class _DropLines(_logging.Filter):
    """Drops a library logger's records that start with one of `prefixes` (its other records pass)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Start-up lines from libraries that a user cannot act on (issue 23), silenced where they are
# logged, by logger name and message, so each library's other warnings still show:
# - bitsandbytes announces at import that an optional CPU kernel could not be fetched from the hub;
#   lmtune works offline and does not use it;
# - torchao (imported by peft and transformers) cannot load its CUDA-only extensions (_C_mxfp8,
#   _C_cutlass_90a) on a CPU build of torch;
# - torch's pytree deprecates torchao's registering Enum constants, at every import of torchao.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
_logging.getLogger("torchao").addFilter(_DropLines("Failed to load ", "Skipping import of cpp extensions"))
_logging.getLogger("torch.utils._pytree").addFilter(_DropLines("%s is an Enum subclass"))
