"""``python -m moopt_lic.train``: the entry point; the command line lives in `moopt_lic.cli`.

In Python, use [`moopt_lic.train`][moopt_lic.trainer.train] (the function) with a
[`moopt_lic.TrainConfig`][moopt_lic.TrainConfig]; this module only runs the command line, and
importing it would shadow that function's name in the package, so nothing imports it.
"""

import sys

from moopt_lic.cli import main

if __name__ == "__main__":
    sys.exit(main())
