"""GGUF export for llama.cpp and Ollama: write (writer.py), verify (verify.py), Modelfile.

One module per concern: arch.py (the architecture tables), tensors.py (names and layouts),
vocab.py (BPE and SentencePiece vocabularies), checks.py (exact read-back by transformers),
llamacpp.py (the file run in llama.cpp, and its k-quant quantizer), modelfile.py (Ollama).
"""

from lmtune.export.gguf.arch import SUPPORTED_MODEL_TYPES
from lmtune.export.gguf.modelfile import write_modelfile
from lmtune.export.gguf.verify import QUANT_TOLERANCES, verify_gguf
from lmtune.export.gguf.writer import BLOCK_QUANTS, K_QUANTS, QUANT_TYPES, export_gguf

__all__ = [
    "BLOCK_QUANTS",
    "K_QUANTS",
    "QUANT_TOLERANCES",
    "QUANT_TYPES",
    "SUPPORTED_MODEL_TYPES",
    "export_gguf",
    "verify_gguf",
    "write_modelfile",
]
