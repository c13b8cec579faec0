"""Names shared by the engine that writes run records and the report that reads them."""

#: Schema tag of every run record (metrics.json and failure records).
RUN_SCHEMA = "vpeft.run/1"

#: Written beside the metrics.json of a run that raised, holding the error; removed on success.
FAILURE_RECORD = "failed.json"

#: Undeclared folder beside metrics.json with the latest per-epoch training state (for resume).
CHECKPOINT_DIR = "checkpoint"

#: Beside metrics.json: the run's trained tensors (method + head) and how to rebuild the model
#: (vpeft.artifacts); written just before metrics.json.
TRAINED_TENSORS = "trained.safetensors"
