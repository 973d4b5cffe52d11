"""`python -m facepriv.cli ...` = `facepriv ...`."""

import sys

from facepriv.cli import main

sys.exit(main())
