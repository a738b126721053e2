"""Learning from rewards: reward functions (rewards.py), prompt files (data.py), the grpo/rloo task
on TRL (task.py), its logs (logs.py) and scoring models with the rewards (evaluate.py)."""
