"""lmtune: fine-tune language models on your own data.

Importing the package stays cheap (no torch, no transformers) so that the CLI answers fast;
heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes announces at import that an optional CPU kernel could not be fetched from the hub;
# lmtune works offline and does not use it, so the line is noise in every command's output.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
