"""The rl section: rewards and sampling for task: grpo / rloo (lmtune.rl)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmtune.config.section import Section

# Rewards lmtune ships (lmtune.rl.rewards); anything else is `module:function` or `path/to/file.py:function`.
RL_BUILTIN_REWARDS = ("exact_match", "numeric_match", "think_format", "regex", "length_penalty")


class RewardEntry(Section):
    """One reward function of `rl.rewards`, with its weight and the options a built-in reads."""

    reward: str = Field(
        description="A built-in (exact_match, numeric_match, think_format, regex, length_penalty), "
        "module:function (importable), or path/to/rewards.py:function (relative to the config file). "
        "A function takes TRL's arguments: completions, prompts, the data's other columns as keyword "
        "lists, **kwargs; it returns one float (or None) per completion."
    )
    weight: float = Field(
        1.0, description="Weight of this reward in the sum the advantages are computed from."
    )
    name: str | None = Field(None, description="Name in metrics and plots; default the function's name.")
    column: str | None = Field(
        None,
        description="exact_match / numeric_match: the data column holding the reference answer (default answer).",
    )
    pattern: str | None = Field(
        None, description="regex: the pattern a completion must contain (re.search, DOTALL)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="length_penalty: completions longer than this many tokens lose (tokens over) / max_tokens, at most 1.",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_string(cls, data: Any) -> Any:
        return {"reward": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known_reward(self) -> RewardEntry:
        import difflib
        import re

        if ":" not in self.reward and self.reward not in RL_BUILTIN_REWARDS:
            close = difflib.get_close_matches(self.reward, RL_BUILTIN_REWARDS, n=1)
            raise ValueError(
                f"unknown reward '{self.reward}'"
                + (f" (did you mean {close[0]}?)" if close else "")
                + f"; built-ins are {', '.join(RL_BUILTIN_REWARDS)}, or give module:function or "
                "path/to/rewards.py:function"
            )
        own = {"exact_match": {"column"}, "numeric_match": {"column"}, "regex": {"pattern"}}
        own["length_penalty"] = {"max_tokens"}
        for key in ("column", "pattern", "max_tokens"):
            if getattr(self, key) is not None and key not in own.get(self.reward, set()):
                users = [r for r, keys in own.items() if key in keys]
                raise ValueError(
                    f"rl.rewards: {key} applies to the {' and '.join(users)} reward(s), not {self.reward}"
                )
        if self.reward == "regex":
            if not self.pattern:
                raise ValueError(
                    "the regex reward needs pattern: the regular expression a completion should contain"
                )
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(
                    f"rl.rewards: pattern {self.pattern!r} is not a valid regular expression: {err}"
                ) from None
        if self.reward == "length_penalty" and self.max_tokens is None:
            raise ValueError(
                "the length_penalty reward needs max_tokens: the length beyond which it penalises"
            )
        return self


class RLSection(Section):
    rewards: list[RewardEntry] = Field(
        default_factory=list,
        description="grpo/rloo: the reward functions, each a built-in name or {reward, weight, name, column, "
        "pattern, max_tokens}; the weighted sum is the reward each sampled answer gets.",
    )
    num_generations: int = Field(
        4,
        ge=2,
        description="Answers sampled per prompt (the group compared with each other). train.batch_size x "
        "train.grad_accum counts answers and must be a multiple of it.",
    )
    max_completion_length: int = Field(128, ge=1, description="Longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the answers.")
    beta: float | None = Field(
        None,
        ge=0,
        description="KL coefficient against the starting model; null: TRL's default (grpo 0.0, no reference "
        "model; rloo 0.05). With LoRA the reference is the base with the adapter off (no second copy).",
    )
    num_iterations: int = Field(
        1, ge=1, description="Optimisation passes over each batch of sampled answers."
    )
    epsilon: float = Field(0.2, gt=0, description="Clipping range of the policy ratio.")
    use_vllm: bool = Field(
        False,
        description="Sample the answers with vLLM (CUDA, vllm installed) instead of transformers' generate.",
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM in the training process; server: a running `trl vllm-serve`."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="colocate: the share of GPU memory vLLM may take."
    )
    log_completions: int = Field(
        4,
        ge=0,
        description="Sampled answers (with their rewards) written to completions.jsonl/.md per logging step.",
    )
