"""Adapters that bring RLSD to other training libraries (optional extras; each imports its library lazily).

- `rlsd.integrations.trl`: `RLSDGRPOConfig` / `RLSDGRPOTrainer`, drop-ins for TRL's GRPO (`pip install -e .[trl]`).
"""
