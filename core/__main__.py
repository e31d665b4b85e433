"""`python -m core` runs the CLI."""

from core.cli import main

main()
