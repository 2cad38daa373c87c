"""Allow `python -m dfprep` as well as the `dfprep` console script."""

from dfprep.cli import main

if __name__ == "__main__":
    main()
