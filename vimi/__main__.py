"""`python -m vimi`: the command line."""

from vimi.cli import main

if __name__ == "__main__":
    main()
