"""LV-ViT with token labeling and Token Expansion: see `python ToE/lvvit/main.py --help` and ToE/lvvit/run/."""

from toe.recipes.lvvit import cli

if __name__ == "__main__":
    cli()
