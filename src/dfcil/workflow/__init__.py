"""Teaching a deployed model new classes from an image folder: ``dfcil learn / predict /
evaluate`` and the Python API (:mod:`dfcil.workflow.api`)."""
