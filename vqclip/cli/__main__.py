"""`python -m vqclip.cli.main`: the command line, as the stack's pieces and the tests start it."""

from vqclip.cli.main import main

main()
