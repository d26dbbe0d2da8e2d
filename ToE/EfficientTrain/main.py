"""EfficientTrain's trainer with Token Expansion, one stage: see `python ToE/EfficientTrain/main.py --help`."""

from toe.recipes.efficienttrain import cli

if __name__ == "__main__":
    cli()
