"""The training engine: task loop, phases, evaluation, logging and checkpoints."""
