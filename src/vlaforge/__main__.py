"""`python -m vlaforge`: the `vlaforge` command."""

from vlaforge.cli import main

if __name__ == "__main__":
    main()
