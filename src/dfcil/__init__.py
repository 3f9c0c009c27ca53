"""dfcil: data-free class-incremental learning."""

__version__ = "0.1.0"
