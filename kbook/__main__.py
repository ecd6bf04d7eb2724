"""``python -m kbook`` runs the command line."""

from kbook.cli import main

main()
