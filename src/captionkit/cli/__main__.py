"""``python -m captionkit.cli``."""

from captionkit.cli import main

main()
