"""transformers' optional imports of scikit-learn and SciPy, turned off in the processes that load a model.

transformers (4.57) imports both whenever they are installed, as soon as a model class is loaded, for code no TRE
process runs: `sklearn.metrics` for assisted decoding's confidence-threshold tuning (`generation/candidate_generator.py`;
no TRE process decodes with an assistant model), `scipy.optimize` for the Hungarian matching of the object-detection
losses (`loss/loss_for_object_detection.py`; TRE loads Qwen2 models). lm-eval, which the environment pins, installs
scikit-learn and SciPy. Importing them cost each model-loading process 2-3 CPU seconds on the 2-core VM
(2026-12-03: `import transformers.generation.utils` 5.8 -> 3.7 CPU s without scikit-learn; verl's FSDP workers plus
a Qwen2 class a further 0.6-1 s without SciPy), and a miniature run has two such processes (its WorkerDict and its
evaluation). Code that imports scikit-learn or SciPy itself is unaffected.
"""

from __future__ import annotations


def skip_unused_optional_imports() -> None:
    """Make transformers treat scikit-learn and SciPy as absent in this process.

    Effective when called before transformers loads its generation code and model classes; harmless after."""
    from transformers.utils import import_utils

    import_utils._sklearn_available = False
    import_utils._scipy_available = False
