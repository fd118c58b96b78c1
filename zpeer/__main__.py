"""`python -m zpeer` is the same CLI as `d`."""
from zpeer.cli.app import main

main()
