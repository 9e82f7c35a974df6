import sys

from z1_jax.cli import main

sys.exit(main())
