"""Token-label files for LV-ViT training: see `python ToE/lvvit/generate_label.py --help`."""

from toe.recipes.generate_label import cli

if __name__ == "__main__":
    cli()
