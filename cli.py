"""`python cli.py ...` from a source checkout: the `keras-layered` command (keras_layered/cli.py)."""

import sys

from keras_layered.cli import main

if __name__ == "__main__":
    sys.exit(main())
