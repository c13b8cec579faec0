"""V-PEFT Bench: parameter-efficient fine-tuning of frozen vision backbones, benchmarked fairly."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import vpeft` stays light (no torch) for the command line and the workflow.
    if name in ("load_run", "export_run"):
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'vpeft' has no attribute {name!r}")
