"""Turning a trained model into files other tools run: merged weights, GGUF for llama.cpp / Ollama."""
