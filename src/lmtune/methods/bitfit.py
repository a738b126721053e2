"""BitFit: only the bias terms train (Ben Zaken et al., 2021).

The run directory holds just the trained biases (bitfit.safetensors, a few KB to MB); loading
puts them back on the base. Llama-family models have no bias terms at all, so there the method is
refused up front instead of "training" nothing. For task: classification the new head trains in
full and is saved with the biases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError, ModelError
from lmtune.methods.base import Method, head_parameter_names, register

WEIGHTS = "bitfit.safetensors"


def bias_names(model: Any) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


def trained_names(model: Any) -> list[str]:
    """The biases, and a classifier's whole head (it starts random)."""
    return list(dict.fromkeys([*bias_names(model), *head_parameter_names(model)]))


@register
class BitFit(Method):
    name = "bitfit"
    mergeable = True  # the trained biases simply replace the base's
    needs_base = True

    def check(self, model: Any, opts: Any) -> None:
        if not bias_names(model):
            kind = getattr(model.config, "model_type", type(model).__name__)
            raise ConfigError(
                f"method bitfit trains only bias terms, and this model ({kind}) has none: Llama-family "
                "models are built without biases, so nothing would train. Use method.name: ln_tuning "
                "(norm weights only, a similarly small update) or method.name: lora."
            )

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        trained = set(bias_names(model))
        if task == "classification":
            trained |= set(head_parameter_names(model))
        for name, param in model.named_parameters():
            param.requires_grad_(name in trained)
        return model

    def save(self, model: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        names = set(trained_names(model))
        state = {n: p.detach().contiguous() for n, p in model.named_parameters() if n in names}
        if state_dict is not None:  # gathered from a sharded run: the same names, whole tensors
            state = {n: state_dict[n].contiguous() for n in state}
        save_file(state, str(out_dir / WEIGHTS), metadata={"format": "pt", "lmtune_method": "bitfit"})

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        from safetensors.torch import load_file

        state = load_file(str(run_dir / WEIGHTS))
        expected = set(trained_names(base))
        if set(state) != expected:
            raise ModelError(
                f"{run_dir / WEIGHTS} does not match the base model's biases "
                f"({len(set(state) - expected)} unknown, {len(expected - set(state))} missing). "
                "Was the run trained on a different base model?"
            )
        base.load_state_dict(state, strict=False)
        return base
