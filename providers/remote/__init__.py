"""Model stages on standard model servers: the OpenAI-compatible HTTP API (llama.cpp's server,
vLLM, Ollama, OpenAI) and the Wyoming protocol (wyoming-faster-whisper, wyoming-piper)."""
