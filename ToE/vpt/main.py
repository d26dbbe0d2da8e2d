"""Visual Prompt Tuning with Token Expansion: see `python ToE/vpt/main.py --help` and ToE/vpt/run/."""

from toe.recipes.vpt import cli

if __name__ == "__main__":
    cli()
