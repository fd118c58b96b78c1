"""`python -m zpeer` is the same CLI as `d`."""
from zpeer.cli import main

main()
