"""`lmtune serve`: an OpenAI-compatible HTTP API over run directories and models.

engine/ generates (continuous batching per model, LoRA runs sharing a base, the vLLM hand-off;
token ids streamed so usage and finish_reason are exact), protocol.py is the OpenAI request/response
shapes, app.py the FastAPI routes, auth and limits, and server.py loads the targets, binds the socket
and runs uvicorn.
"""
