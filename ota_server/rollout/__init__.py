"""The campaign engine: per-VIN states, rollout rules and the scheduler that applies them."""
