"""DeiT with Token Expansion: see `python ToE/deit/main.py --help` and ToE/deit/run/."""

from toe.recipes.deit import cli

if __name__ == "__main__":
    cli()
