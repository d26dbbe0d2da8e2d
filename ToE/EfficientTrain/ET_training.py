"""EfficientTrain's 5-stage curriculum with Token Expansion: see `python ToE/EfficientTrain/ET_training.py --help`."""

from toe.recipes.et_training import cli

if __name__ == "__main__":
    cli()
