"""V-PEFT Bench: parameter-efficient fine-tuning of frozen vision backbones, benchmarked fairly."""

__version__ = "0.1.0"
