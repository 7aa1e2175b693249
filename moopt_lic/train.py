"""``python -m moopt_lic.train``: the entry point; the command line lives in :mod:`moopt_lic.cli`.

In Python, use :func:`moopt_lic.train` (the function) with a :class:`moopt_lic.TrainConfig`;
this module only runs the command line, and importing it would shadow that function's name
in the package, so nothing imports it.
"""

import sys

from moopt_lic.cli import main

if __name__ == "__main__":
    sys.exit(main())
