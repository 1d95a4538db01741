"""The suite's core, below every part: errors, files (atomic writes, digests, portable paths), result
records, data, the model zoo and model loading, evaluation, the shared command-line arguments and
the registry through which parts plug in. Nothing here knows the PFCR method or any executor."""
