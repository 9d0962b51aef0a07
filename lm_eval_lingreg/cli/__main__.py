import sys

from lm_eval_lingreg.cli import main

sys.exit(main())
