"""`python -m vimi.cli` (what `accelerate launch -m vimi.cli ...` runs): the `vimi` command line."""

from vimi.cli import main

if __name__ == "__main__":
    main()
