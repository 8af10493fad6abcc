"""A module that records who imports it: the pid goes to the file $IMPORT_MARKER, one per line.

toy_ddp.py --import-marker imports it at run time, as scripts import their own
model code; a warm spare should import it too, before it ever takes a rank.
"""

import os

with open(os.environ["IMPORT_MARKER"], "a") as _marker:
    _marker.write(f"{os.getpid()}\n")
