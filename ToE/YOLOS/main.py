"""YOLOS with Token Expansion: see `python ToE/YOLOS/main.py --help` and ToE/YOLOS/run/."""

from toe.recipes.yolos import cli

if __name__ == "__main__":
    cli()
