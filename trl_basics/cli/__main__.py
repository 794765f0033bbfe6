import os
import sys

# `python -m` puts the working directory first on sys.path; the `trl-basics` script does not. Drop it, so that both
# import the same modules (reward-function modules in the working directory are found by one explicit rule; see
# imports.import_callable).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from trl_basics.cli import main

raise SystemExit(main())
