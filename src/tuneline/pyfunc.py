"""Import shim: versions registered before the task-plugin layout load `tuneline.pyfunc.TunelineModel`
from their models-from-code file (tests/test_legacy_versions.py loads one)."""
from tuneline.classification.pyfunc import TunelineModel  # noqa: F401
