"""``python -m genbot`` is the ``genbot`` command."""

from genbot.cli import main

main()
