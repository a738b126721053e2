"""Fine-tuning methods, registered by name (`method.name` in the config).

A method turns a loaded base model into the model to train, says whether it can be merged into the
base, saves what it trained into the run directory, and loads it back onto a base model. A new
method is one small module that registers a `Method` subclass here.
"""

from __future__ import annotations

from lmtune.methods.base import Method, get_method, register

__all__ = ["Method", "get_method", "register"]
