"""``python -m wise_edit.easyedit SCRIPT [ARGS...]`` (see :mod:`wise_edit.easyedit.launcher`)."""

from .launcher import main

main()
