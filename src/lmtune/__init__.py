"""lmtune: fine-tune language models on your own data.

Importing the package stays cheap (no torch, no transformers) so that the CLI answers fast;
heavy libraries are imported inside the functions that need them.
"""

__version__ = "0.1.0"
